"""Log-in dialog and the Users screen (users, roles, the audit log).

Passwords are checked by the database (salted scrypt hashes, core.storage); the check runs in a worker
because scrypt is deliberately slow. Operators tag and start/stop; engineers also retrain, calibrate,
promote and change settings; admins also manage users.
"""
from __future__ import annotations

import json
from datetime import timezone

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDialog, QFormLayout, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QPushButton, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from core.storage.roles import ROLE_PERMISSIONS, ROLES
from inspector import workers

AUDIT_PAGE = 100


class LoginDialog(QDialog):
    """Asks for a name and password; ``user`` holds the authenticated User after accept()."""

    def __init__(self, db, demo_credentials: list[tuple[str, str, str]] | None = None, parent=None) -> None:
        super().__init__(parent)
        self.db = db
        self.user = None
        self.setWindowTitle("Inspection station — log in")
        self.setMinimumWidth(420)
        title = QLabel("Log in")
        title.setObjectName("pageTitle")
        self.name = QLineEdit()
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.message = QLabel("")
        self.message.setObjectName("hint")
        self.message.setWordWrap(True)
        self.ok_button = QPushButton("Log in")
        self.ok_button.setObjectName("primary")
        self.ok_button.setDefault(True)
        self.ok_button.clicked.connect(self.try_login)
        cancel = QPushButton("Quit")
        cancel.clicked.connect(self.reject)
        form = QFormLayout()
        form.addRow("User", self.name)
        form.addRow("Password", self.password)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(cancel)
        buttons.addWidget(self.ok_button)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        if demo_credentials:
            lines = "<br>".join(f"<b>{name}</b> / <b>{password}</b> — {role}" for name, password, role in demo_credentials)
            demo = QLabel(f"Demo station. Log in as:<br>{lines}")
            demo.setObjectName("infoBar")
            demo.setTextFormat(Qt.TextFormat.RichText)
            layout.addWidget(demo)
            self.name.setText(demo_credentials[0][0])
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addLayout(buttons)
        # typing starts where something is missing: the password when the name is already filled in
        (self.password if self.name.text() else self.name).setFocus()

    def try_login(self) -> None:
        name, password = self.name.text().strip(), self.password.text()
        if not name or not password:
            self.message.setText("Enter your user name and password.")
            return
        self.ok_button.setEnabled(False)
        self.message.setText("Checking…")
        db = self.db
        workers.submit(lambda: db.authenticate(name, password), self._answer, self._failed, "login")

    def _answer(self, user) -> None:
        self.ok_button.setEnabled(True)
        if user is None:
            self.message.setText("Wrong user name or password (or the user is disabled).")
            self.password.selectAll()
            self.password.setFocus()
            return
        self.user = user
        self.accept()

    def _failed(self, message: str) -> None:
        self.ok_button.setEnabled(True)
        self.message.setText(f"The log-in could not be checked: {message}")


class FirstAdminDialog(QDialog):
    """A station whose database has no user yet: create the first administrator (who then adds the others)."""

    def __init__(self, db, parent=None) -> None:
        super().__init__(parent)
        self.db = db
        self.user = None
        self.setWindowTitle("Inspection station — first start")
        self.setMinimumWidth(440)
        title = QLabel("Create the administrator")
        title.setObjectName("pageTitle")
        note = QLabel("This station has no users yet. The administrator adds operators and engineers "
                      "on the Users screen.")
        note.setWordWrap(True)
        note.setObjectName("hint")
        self.name = QLineEdit("admin")
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.repeat = QLineEdit()
        self.repeat.setEchoMode(QLineEdit.EchoMode.Password)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.ok_button = QPushButton("Create and log in")
        self.ok_button.setObjectName("primary")
        self.ok_button.clicked.connect(self.create)
        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Password", self.password)
        form.addRow("Repeat password", self.repeat)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(note)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(self.ok_button)

    def create(self) -> None:
        name, password = self.name.text().strip(), self.password.text()
        if password != self.repeat.text():
            self.message.setText("The two passwords differ.")
            return
        self.ok_button.setEnabled(False)
        db = self.db
        workers.submit(lambda: (db.create_user(name, password, "admin"), db.authenticate(name, password))[1],
                       self._created, self._failed, "first-admin")

    def _created(self, user) -> None:
        self.user = user
        self.accept()

    def _failed(self, message: str) -> None:
        self.ok_button.setEnabled(True)
        self.message.setText(f"Not created: {message}")


class UsersPage(QWidget):
    """Users and roles (admins add users and change roles) and the audit log, newest first, paged."""

    def __init__(self, context) -> None:
        super().__init__()
        self.context = context
        self.audit_offset = 0
        title = QLabel("Users and audit log")
        title.setObjectName("pageTitle")

        self.users = QTableWidget(0, 3)
        self.users.setHorizontalHeaderLabels(["User", "Role", "Active"])
        self.users.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.users.verticalHeader().setVisible(False)
        self.users.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.users.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.users.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.user_list: list = []
        self.change_role = QComboBox()
        self.change_role.addItems(list(ROLES))
        self.role_button = QPushButton("Set role")
        self.role_button.clicked.connect(lambda: self.update_selected(role=self.change_role.currentText()))
        self.active_button = QPushButton("Disable / enable")
        self.active_button.clicked.connect(self.toggle_selected)
        change_row = QHBoxLayout()
        change_row.addWidget(self.change_role)
        change_row.addWidget(self.role_button)
        change_row.addWidget(self.active_button)
        rights = QLabel("<br>".join(f"<b>{role}</b>: {', '.join(sorted(a.replace('_', ' ') for a in actions))}"
                                    for role, actions in ROLE_PERMISSIONS.items()))
        rights.setTextFormat(Qt.TextFormat.RichText)
        rights.setWordWrap(True)
        rights.setObjectName("hint")
        self.new_name = QLineEdit()
        self.new_password = QLineEdit()
        self.new_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.new_role = QComboBox()
        self.new_role.addItems(list(ROLES))
        self.add_button = QPushButton("Add user")
        self.add_button.clicked.connect(self.add_user)
        add_form = QFormLayout()
        add_form.addRow("Name", self.new_name)
        add_form.addRow("Password", self.new_password)
        add_form.addRow("Role", self.new_role)
        add_form.addRow(self.add_button)
        users_group = QGroupBox("Users")
        users_layout = QVBoxLayout(users_group)
        users_layout.addWidget(self.users, 1)
        users_layout.addLayout(change_row)
        users_layout.addWidget(rights)
        users_layout.addLayout(add_form)

        self.audit = QTableWidget(0, 4)
        self.audit.setHorizontalHeaderLabels(["Time (UTC)", "User", "Action", "Details"])
        self.audit.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.audit.verticalHeader().setVisible(False)
        self.audit.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.audit.horizontalHeader().setStretchLastSection(True)
        self.audit.setWordWrap(False)
        self.newer = QPushButton("◀ Newer")
        self.older = QPushButton("Older ▶")
        self.refresh_button = QPushButton("Refresh")
        self.page_label = QLabel("")
        self.newer.clicked.connect(lambda: self.load_audit(max(0, self.audit_offset - AUDIT_PAGE)))
        self.older.clicked.connect(lambda: self.load_audit(self.audit_offset + AUDIT_PAGE))
        self.refresh_button.clicked.connect(self.refresh)
        nav = QHBoxLayout()
        nav.addWidget(self.page_label, 1)
        nav.addWidget(self.refresh_button)
        nav.addWidget(self.newer)
        nav.addWidget(self.older)
        audit_group = QGroupBox("Audit log: every change that affects the line")
        audit_layout = QVBoxLayout(audit_group)
        audit_layout.addWidget(self.audit, 1)
        audit_layout.addLayout(nav)

        body = QHBoxLayout()
        body.addWidget(users_group, 2)
        body.addWidget(audit_group, 5)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addLayout(body, 1)
        context.user_changed.connect(lambda _u: self._update_rights())
        self._update_rights()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.refresh()

    def _update_rights(self) -> None:
        may = self.context.may("manage_users")
        for widget in (self.new_name, self.new_password, self.new_role, self.add_button, self.change_role,
                       self.role_button, self.active_button):
            widget.setEnabled(may)

    def refresh(self) -> None:
        db = self.context.db
        workers.submit(db.list_users, self._users_arrived,
                       lambda m: self.context.report(f"The users could not be read: {m}"), "list-users")
        self.load_audit(self.audit_offset)

    def _users_arrived(self, users) -> None:
        self.user_list = list(users)
        self.users.setRowCount(len(users))
        for row, user in enumerate(users):
            for column, value in enumerate((user.name, user.role, "yes" if user.active else "no")):
                self.users.setItem(row, column, QTableWidgetItem(value))

    def load_audit(self, offset: int) -> None:
        db = self.context.db
        workers.submit(lambda: (offset, db.list_audit(offset=offset, limit=AUDIT_PAGE), db.count_audit()),
                       self._audit_arrived, lambda m: self.context.report(f"The audit log could not be read: {m}"),
                       "list-audit")

    def _audit_arrived(self, loaded) -> None:
        offset, entries, total = loaded
        self.audit_offset = offset
        self.audit.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            detail = json.dumps(entry.detail, sort_keys=True, default=str)
            values = (entry.time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), entry.user_name or "—",
                      entry.action, detail if len(detail) < 160 else detail[:157] + "…")
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                if column == 3:
                    item.setToolTip(detail)
                self.audit.setItem(row, column, item)
        last = offset + len(entries)
        self.page_label.setText(f"entries {offset + 1 if entries else 0}–{last} of {total}")
        self.newer.setEnabled(offset > 0)
        self.older.setEnabled(last < total)

    def selected_user(self):
        rows = self.users.selectionModel().selectedRows()
        return self.user_list[rows[0].row()] if rows and rows[0].row() < len(self.user_list) else None

    def toggle_selected(self) -> None:
        user = self.selected_user()
        if user is not None:
            self.update_selected(active=not user.active)

    def update_selected(self, **changes) -> None:
        """Change the selected user's role or active flag (admins; the database keeps one active admin)."""
        user = self.selected_user()
        if user is None:
            self.context.report("Select a user in the table first.")
            return
        if not self.context.require("manage_users"):
            return
        db, by = self.context.db, self.context.user
        workers.submit(lambda: db.update_user(user.id, by=by, **changes), self._user_changed,
                       lambda m: self.context.report(f"The user was not changed: {m}"), "update-user")

    def _user_changed(self, user) -> None:
        self.context.tell(f"User {user.name}: role {user.role}, {'active' if user.active else 'disabled'}.")
        self.refresh()

    def add_user(self) -> None:
        if not self.context.require("manage_users"):
            return
        name, password, role = self.new_name.text().strip(), self.new_password.text(), self.new_role.currentText()
        db, by = self.context.db, self.context.user
        workers.submit(lambda: db.create_user(name, password, role, by=by), self._user_added,
                       lambda m: self.context.report(f"The user was not added: {m}"), "create-user")

    def _user_added(self, user) -> None:
        self.new_name.clear()
        self.new_password.clear()
        self.context.tell(f"User {user.name} ({user.role}) added.")
        self.refresh()
