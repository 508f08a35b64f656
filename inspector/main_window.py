"""The station's main window: navigation, one page per screen, a message bar, the user in the status bar."""
from __future__ import annotations

import logging

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QMainWindow, QPushButton,
                               QStackedWidget, QVBoxLayout, QWidget)

from inspector import workers
from inspector.calibrate import CalibrateView
from inspector.charts import ChartsView
from inspector.line import LineController
from inspector.live_view import LiveView
from inspector.model_page import ModelPage
from inspector.review import ReviewView
from inspector.settings_page import SettingsPage
from inspector.styles import icon
from inspector.users import LoginDialog, UsersPage

log = logging.getLogger(__name__)

PAGES = (("live", "Live"), ("charts", "Charts"), ("review", "Review"), ("model", "Models"),
         ("calibrate", "Calibrate"), ("settings", "Settings"), ("users", "Users"))


class MessageBar(QLabel):
    """One line at the top of the window: errors stay until clicked, information fades after 8 s."""

    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)
        self.setVisible(False)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Click to dismiss")
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(lambda: self.setVisible(False))

    def show_error(self, message: str) -> None:
        self.setObjectName("errorBar")
        self.setStyleSheet("")  # re-apply the style sheet for the new object name
        self.setText(f"⚠  {message}")
        self.setVisible(True)
        self._timer.stop()

    def show_info(self, message: str) -> None:
        self.setObjectName("infoBar")
        self.setStyleSheet("")
        self.setText(message)
        self.setVisible(True)
        self._timer.start(8000)

    def mousePressEvent(self, event) -> None:  # noqa: N802
        self.setVisible(False)
        super().mousePressEvent(event)


class MainWindow(QMainWindow):
    def __init__(self, context) -> None:
        super().__init__()
        workers.keep_main_thread_responsive()
        self.context = context
        self.setWindowTitle("Inspection station" + (" — demo" if context.demo else ""))
        self.resize(1360, 860)
        context.line = LineController(context)
        self.line = context.line

        self.messages = MessageBar()
        context.error.connect(self.messages.show_error)
        context.info.connect(self.messages.show_info)
        self.line.error.connect(context.report)

        self.live = LiveView(context)
        self.charts = ChartsView(context, self.live)
        self.review = ReviewView(context)
        self.model_page = ModelPage(context)
        self.calibrate = CalibrateView(context)
        self.settings_page = SettingsPage(context)
        self.users_page = UsersPage(context)
        self.pages = {"live": self.live, "charts": self.charts, "review": self.review, "model": self.model_page,
                      "calibrate": self.calibrate, "settings": self.settings_page, "users": self.users_page}

        self.nav = QListWidget()
        self.nav.setObjectName("nav")
        self.nav.setIconSize(QSize(24, 24))
        self.nav.setFixedWidth(170)
        self.stack = QStackedWidget()
        for key, title in PAGES:
            item = QListWidgetItem(icon(key), title)
            item.setData(Qt.ItemDataRole.UserRole, key)
            self.nav.addItem(item)
            self.stack.addWidget(self.pages[key])
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.nav.setCurrentRow(0)

        content = QVBoxLayout()
        content.setContentsMargins(10, 8, 10, 4)
        content.addWidget(self.messages)
        content.addWidget(self.stack, 1)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.nav)
        layout.addLayout(content, 1)
        self.setCentralWidget(central)

        self.user_label = QLabel("")
        self.switch_button = QPushButton("Switch user")
        self.switch_button.clicked.connect(self.switch_user)
        data_label = QLabel(f"Data: {context.data_dir}   Database: {context.db.url}")
        data_label.setObjectName("hint")
        self.statusBar().addWidget(data_label, 1)
        self.statusBar().addPermanentWidget(self.user_label)
        self.statusBar().addPermanentWidget(self.switch_button)
        context.user_changed.connect(self._user_changed)
        self._user_changed(context.user)

    def show_page(self, key: str) -> QWidget:
        self.nav.setCurrentRow([k for k, _ in PAGES].index(key))
        return self.pages[key]

    def _user_changed(self, user) -> None:
        self.user_label.setText(f"Logged in: {user.name} ({user.role})" if user else "Not logged in")

    def switch_user(self) -> None:
        dialog = LoginDialog(self.context.db, self.context.demo.credentials if self.context.demo else None, self)
        if dialog.exec() and dialog.user is not None:
            self.context.set_user(dialog.user)

    def closeEvent(self, event) -> None:  # noqa: N802
        for timer in self.findChildren(QTimer):
            timer.stop()
        self.model_page.shutdown()
        self.line.shutdown()
        workers.wait_idle(10_000)
        super().closeEvent(event)
