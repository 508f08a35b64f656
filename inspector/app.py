"""Starting the station GUI: ``inspector [--demo] [--data-dir DIR] [--settings FILE]``.

The demo (``--demo``) needs no camera and no data: it sets up a data directory ($INSPECTOR_DATA or
~/.local/share/inspector/demo), trains a small demo model on synthetic images on first start (progress shown),
creates demo users (credentials shown on the log-in screen), logs in and starts the line on the synthetic
camera, so verdicts appear within seconds.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Sequence

log = logging.getLogger("inspector")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspector", description="Line-side inspection station (GUI).")
    parser.add_argument("--demo", action="store_true", help="complete demo: synthetic camera, demo model, demo users")
    parser.add_argument("--demo-family", default="baseline", choices=("baseline", "supersimplenet", "cam"),
                        help="demo: family of the demo model trained on first start (baseline: seconds on a CPU)")
    parser.add_argument("--data-dir", help="data directory (database, images, models, settings)")
    parser.add_argument("--settings", help="settings file (default: <data dir>/settings.json)")
    parser.add_argument("--source", help="frame source for this session (synthetic | folder:DIR | genicam[:CTI[#SERIAL]]);"
                                         " the line starts after log-in")
    parser.add_argument("--model", help="model package to run in this session (registered, not made active)")
    parser.add_argument("--db", help="database URL for this session (default: the settings' URL or SQLite)")
    parser.add_argument("--no-autostart", action="store_true", help="do not start the line by itself")
    return parser


def setup_logging(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if any(getattr(h, "_inspector", False) for h in root.handlers):
        return
    handler = RotatingFileHandler(data_dir / "inspector.log", maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    handler._inspector = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def install_excepthook(context) -> None:
    """Unexpected errors on the main thread are logged and shown; the application keeps running."""
    def hook(kind, value, tb) -> None:
        log.error("unexpected error", exc_info=(kind, value, tb))
        try:
            context.report(f"Unexpected error (details in the log): {value}")
        except Exception:
            pass

    sys.excepthook = hook


def run_demo_setup(app, data_dir: Path, family: str = "baseline"):
    """prepare_demo in a worker thread while a progress dialog shows its progress; returns DemoSetup or raises."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QProgressDialog

    from core.demo import prepare_demo

    state: dict = {"event": None, "result": None, "error": None}

    def work() -> None:
        try:
            state["result"] = prepare_demo(data_dir, progress=lambda e: state.__setitem__("event", e), family=family)
        except BaseException as exc:  # shown to the user below
            log.exception("demo set-up failed")
            state["error"] = exc

    thread = threading.Thread(target=work, name="demo-setup", daemon=True)
    dialog = QProgressDialog("Preparing the demo station…", "", 0, 1000)
    dialog.setWindowTitle("Inspection station — demo")
    dialog.setCancelButton(None)
    dialog.setMinimumDuration(300)
    dialog.setMinimumWidth(460)
    loop = QEventLoop()

    def tick() -> None:
        event = state["event"]
        if event is not None:
            dialog.setValue(int(event.fraction * 1000))
            eta = f" (about {int(event.eta_s)} s left)" if event.eta_s else ""
            dialog.setLabelText(f"Preparing the demo station…\n{event.stage}: {event.message}{eta}")
        if not thread.is_alive():
            loop.quit()

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(50)
    thread.start()
    loop.exec()
    timer.stop()
    dialog.close()
    if state["error"] is not None:
        raise state["error"]
    return state["result"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from PySide6.QtWidgets import QApplication, QMessageBox

    from core.settings import SettingsError, default_data_dir, load_settings
    from core.storage import open_database
    from inspector.context import AppContext, DemoInfo
    from inspector.main_window import MainWindow
    from inspector.styles import apply_style
    from inspector.users import FirstAdminDialog, LoginDialog

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir(demo=args.demo)
    setup_logging(data_dir)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "inspector"])
    app.setApplicationName("Inspection station")
    apply_style(app)

    demo = None
    if args.demo:
        try:
            setup = run_demo_setup(app, data_dir, args.demo_family)
        except Exception as exc:
            QMessageBox.critical(None, "Demo", f"The demo could not be prepared: {exc}\n\nDetails: {data_dir / 'inspector.log'}")
            return 1
        demo = DemoInfo(credentials=list(setup.credentials))
    settings_path = Path(args.settings).expanduser() if args.settings else data_dir / "settings.json"
    try:
        settings = load_settings(settings_path)
    except SettingsError as exc:
        QMessageBox.critical(None, "Settings", f"The settings file cannot be used:\n{exc}\n\nFix or remove it and start again.")
        return 2
    if settings.storage.data_dir and not args.data_dir and not args.demo:
        data_dir = Path(settings.storage.data_dir).expanduser()
    if args.source:  # for this session only; the settings file is not changed
        settings.camera.source = args.source
        try:
            settings.validate()
        except SettingsError as exc:
            QMessageBox.critical(None, "Source", f"--source cannot be used: {exc}")
            return 2
    try:
        db = open_database(args.db or settings.storage.database_url or None, data_dir)
    except Exception as exc:
        log.exception("database open failed")
        QMessageBox.critical(None, "Database", f"The station database could not be opened: {exc}")
        return 1
    session_model = None
    if args.model:
        try:
            from core.inference.package import read_meta

            model_path = Path(args.model).expanduser().resolve()
            session_model = (model_path, db.register_model(model_path, read_meta(model_path)))
        except Exception as exc:
            log.exception("model package refused")
            QMessageBox.critical(None, "Model", f"The model package cannot be used: {exc}")
            db.close()
            return 2

    context = AppContext(settings, settings_path, data_dir, db, demo=demo)
    install_excepthook(context)
    if not _has_users(db):
        first = FirstAdminDialog(db)
        if not first.exec() or first.user is None:
            db.close()
            return 0
        user = first.user
    else:
        login = LoginDialog(db, demo.credentials if demo else None)
        if not login.exec() or login.user is None:
            db.close()
            return 0
        user = login.user
    window = MainWindow(context)
    if session_model is not None:
        context.line.session_model = session_model
    context.set_user(user)
    window.show()
    if demo is not None:
        context.tell("Demo: synthetic camera with planted defects. Tag images on Review, retrain on Models.")
    if (demo is not None or args.source) and not args.no_autostart and context.may("start_stop"):
        context.line.start()
    code = app.exec()
    db.close()
    return int(code)


def _has_users(db) -> bool:
    """False on a new station (no user yet): then the first administrator is created instead of a log-in."""
    try:
        return bool(db.list_users())
    except Exception:
        log.exception("could not list users")
        return True  # the log-in will say what is wrong


if __name__ == "__main__":
    raise SystemExit(main())
