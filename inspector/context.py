"""What every screen shares: settings, the database, the logged-in user, the line and the active model.

The context is a QObject so screens react to changes through signals (napari-style: model and view
apart). It holds no widgets. Permission checks go through ``core.storage.roles`` so the GUI greys out what
the user may not do, and the database re-checks every change anyway.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from core.settings import Settings, save_settings
from core.storage.roles import PermissionDenied, allowed, require
from inspector import workers

log = logging.getLogger(__name__)


@dataclass
class DemoInfo:
    """What the demo set up, shown on screen (credentials included, since they are the demo's own)."""

    credentials: list[tuple[str, str, str]] = field(default_factory=list)  # (name, password, role)


class AppContext(QObject):
    """Shared state. Signals fire on the main thread."""

    user_changed = Signal(object)          # User | None
    models_changed = Signal()              # registered/promoted/rolled back/calibrated
    settings_changed = Signal(object)      # Settings
    error = Signal(str)                    # plain words for the user (already logged)
    info = Signal(str)
    tags_changed = Signal()

    def __init__(self, settings: Settings, settings_path: Path, data_dir: Path, db, *,
                 demo: DemoInfo | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.settings_path = Path(settings_path)
        self.data_dir = Path(data_dir)
        self.db = db
        self.user = None
        self.demo = demo
        self.line = None  # inspector.line.LineController, set by the main window

    # -- users and rights -------------------------------------------------------------------------
    def set_user(self, user) -> None:
        self.user = user
        log.info("user %s", f"{user.name} ({user.role}) logged in" if user else "logged out")
        self.user_changed.emit(user)

    def may(self, action: str) -> bool:
        return allowed(self.user, action)

    def require(self, action: str) -> bool:
        """True when allowed; otherwise tell the user why not (plain words) and return False."""
        try:
            require(self.user, action)
        except PermissionDenied as exc:
            self.report(f"Not allowed: {exc}. Log in as an engineer to do this.")
            return False
        return True

    # -- messages ---------------------------------------------------------------------------------
    def report(self, message: str) -> None:
        log.error("%s", message)
        self.error.emit(message)

    def tell(self, message: str) -> None:
        log.info("%s", message)
        self.info.emit(message)

    # -- settings ---------------------------------------------------------------------------------
    def save_settings(self, settings: Settings) -> None:
        """Validate and write (raises SettingsError); audit the change."""
        before = self.settings.to_dict()
        save_settings(settings, self.settings_path)
        self.settings = settings
        changed = _diff(before, settings.to_dict())
        db, user, detail = self.db, self.user, {"changed": changed, "file": str(self.settings_path)}
        # the file is saved; the audit row is written off the main thread, a failure is logged
        workers.submit(lambda: db.audit(user, "settings", detail),
                       on_error=lambda m: log.error("settings change not audited: %s", m), name="audit-settings")
        self.settings_changed.emit(settings)


def _diff(before: dict, after: dict, prefix: str = "") -> dict:
    out = {}
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = [a, b]
    return out
