"""Screenshots of every screen from the real window, driven through a demo session.

    xvfb-run -s "-screen 0 1600x1000x24" python -m inspector.screenshots docs/screenshots

Sets up a fresh demo data directory (temporary unless --data-dir), logs in as the demo engineer, streams
the synthetic camera, tags the stored inspections (by verdict, an operator's quick first pass), runs a
baseline retrain, and saves one PNG per screen.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _wait(app, condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.005)
    return True


def _pause(app, seconds: float) -> None:
    _wait(app, lambda: False, seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Screenshots of every screen of the station GUI.")
    parser.add_argument("out", help="folder for the PNG files")
    parser.add_argument("--data-dir", help="demo data directory (default: a temporary one)")
    parser.add_argument("--stream-s", type=float, default=15.0, help="seconds of streaming before the Live shot")
    parser.add_argument("--family", default="baseline", help="the demo model's family (core.demo.DEMO_TRAINING)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtWidgets import QApplication

    from core.demo import prepare_demo
    from core.settings import load_settings
    from core.storage import open_database
    from inspector import workers
    from inspector.context import AppContext, DemoInfo
    from inspector.main_window import MainWindow
    from inspector.styles import apply_style
    from inspector.users import LoginDialog

    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_style(app)
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="inspector-shots-"))
    setup = prepare_demo(data_dir, family=args.family)
    settings = load_settings(setup.settings_path)
    db = open_database(settings.storage.database_url or None, data_dir)
    shots: list[Path] = []

    def save(widget, name: str) -> None:
        app.processEvents()
        path = out / f"{name}.png"
        widget.grab().save(str(path))
        shots.append(path)
        print(f"saved {path}", flush=True)

    login = LoginDialog(db, list(setup.credentials))
    login.show()
    _pause(app, 0.3)
    save(login, "login")
    login.close()

    context = AppContext(settings, setup.settings_path, data_dir, db, demo=DemoInfo(list(setup.credentials)))
    window = MainWindow(context)
    window.resize(1440, 900)
    window.show()
    context.set_user(db.authenticate("engineer", "engineer"))
    context.tell("Demo: synthetic camera with planted defects. Tag images on Review, retrain on Models.")
    context.line.start()
    _wait(app, lambda: context.line.running, 60)
    _pause(app, args.stream_s)
    live = window.live
    # the Live shot with a defect on screen: wait for an NG frame, then grab before the next one lands
    _wait(app, lambda: live.banner.label.text() == "NG", 60)
    live.frame_timer.stop()
    save(window, "live")
    live.frame_timer.start()
    window.show_page("charts")
    _pause(app, 1.5)
    save(window, "charts")
    context.line.stop()
    _wait(app, lambda: not context.line.running and not context.line.busy, 60)

    user = context.user
    rows = db.list_inspections(limit=5000)
    db.tag_many([r.id for r in rows if r.verdict == "NG"], "NG", user)
    db.tag_many([r.id for r in rows if r.verdict == "OK" and r.has_image], "OK", user)
    review = window.show_page("review")
    review.tag_box.setCurrentIndex(0)
    review.refresh()
    _wait(app, lambda: review.model.rowCount() > 0 and review.model.view_at(0) is not None, 30)
    ng_row = next((i for i in range(min(review.model.rowCount(), 200))
                   if (v := review.model.view_at(i)) is not None and v.verdict == "NG" and v.has_image), 0)
    review.select_row(ng_row)
    _wait(app, lambda: review.image_view.image_item.image is not None, 30)
    _pause(app, 1.0)
    save(window, "review")

    page = window.show_page("model")
    finished: list = []
    page.retrain_finished.connect(lambda model_id, state: finished.append((model_id, state)))
    page.retrain()
    _wait(app, lambda: bool(finished), 300)
    _pause(app, 1.5)
    save(window, "models")

    calibrate = window.show_page("calibrate")
    calibrate.reload()
    _wait(app, lambda: calibrate.labels.size > 0, 30)
    _pause(app, 1.0)
    save(window, "calibrate")
    window.show_page("settings")
    save(window, "settings")
    window.show_page("users")
    _pause(app, 1.5)
    save(window, "users")

    window.close()
    workers.wait_idle(30_000)
    db.close()
    print(f"{len(shots)} screenshots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
