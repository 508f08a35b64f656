"""The station's look: style sheet, icons, verdict colours; resources are read from ``resources/``."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QColor, QIcon
from PySide6.QtWidgets import QApplication, QWidget

RESOURCES = Path(__file__).resolve().parents[1] / "resources"

VERDICT_COLOURS: dict[str, str] = {"OK": "#1a7f37", "NG": "#cf222e", "REVIEW": "#bf8700", "NONE": "#6e7781"}
THRESHOLD_PENS: dict[str, str] = {"ok": "#1a7f37", "ng": "#cf222e"}


def apply_style(app: QApplication) -> None:
    """Install the style sheet (a missing file leaves Qt's default look, with no error)."""
    app.setStyle("Fusion")  # the same look on every platform; the style sheet refines it
    qss = RESOURCES / "style.qss"
    if qss.is_file():
        app.setStyleSheet(qss.read_text(encoding="utf-8"))
    app.setWindowIcon(icon("app"))


def icon(name: str) -> QIcon:
    return QIcon(str(RESOURCES / "icons" / f"{name}.svg"))


def colour(verdict: str | None) -> QColor:
    return QColor(VERDICT_COLOURS.get(verdict or "NONE", VERDICT_COLOURS["NONE"]))


def set_property(widget: QWidget, name: str, value: str) -> None:
    """Set a dynamic property used by the style sheet and re-polish so the new look applies."""
    if widget.property(name) == value:
        return
    widget.setProperty(name, value)
    widget.style().unpolish(widget)
    widget.style().polish(widget)
