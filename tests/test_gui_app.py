"""`inspector --demo` on a fresh machine: data directory, demo model trained with progress, demo users,
log-in, live verdicts within seconds; a second start finds everything in place."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import re  # noqa: E402
from pathlib import Path  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("pytestqt")

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QProgressDialog  # noqa: E402

from core.demo import prepare_demo  # noqa: E402
from core.storage import open_database  # noqa: E402
from inspector import app as inspector_app  # noqa: E402
from inspector.main_window import MainWindow  # noqa: E402
from inspector.users import LoginDialog  # noqa: E402


def run_app(argv: list[str], drive, give_up_s: float) -> int:
    """Run the real application's main(argv) while ``drive()`` is called every 100 ms on the Qt thread.
    After ``give_up_s`` every window is closed, so a stuck test fails instead of hanging."""
    started = time.monotonic()

    def tick() -> None:
        drive()
        if time.monotonic() - started > give_up_s:
            for widget in QApplication.topLevelWidgets():
                widget.close()

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(100)
    try:
        return inspector_app.main(argv)
    finally:
        timer.stop()


def test_demo_on_a_fresh_machine(tmp_path, monkeypatch, qapp):
    monkeypatch.setenv("INSPECTOR_DATA", str(tmp_path / "inspector"))
    seen: dict = {"progress": False, "login_text": "", "verdicts": 0, "seconds_to_verdicts": None}
    started = time.monotonic()
    logged_in_at: list[float] = []

    def drive() -> None:
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, QProgressDialog) and widget.isVisible():
                seen["progress"] = True
            if isinstance(widget, LoginDialog) and widget.isVisible() and widget.ok_button.isEnabled():
                text = " ".join(label.text() for label in widget.findChildren(type(widget.message)))
                seen["login_text"] = re.sub(r"<[^>]+>", "", text)
                widget.name.setText("operator")
                widget.password.setText("operator")
                widget.try_login()
                logged_in_at.append(time.monotonic())
            if isinstance(widget, MainWindow) and widget.isVisible():
                if widget.live.frames_shown >= 3:
                    seen["verdicts"] = widget.live.frames_shown
                    seen["seconds_to_verdicts"] = time.monotonic() - logged_in_at[0]
                    seen["rows"] = widget.context.db.count_inspections()
                    seen["user"] = widget.context.user.name
                    widget.close()

    code = run_app(["--demo"], drive, give_up_s=240)
    assert code == 0
    assert seen["progress"], "the demo set-up showed no progress dialog"
    print(f"demo: verdicts on screen {seen['seconds_to_verdicts']:.1f} s after log-in, "
          f"{time.monotonic() - started:.1f} s after start")
    assert "engineer / engineer" in seen["login_text"] and "operator / operator" in seen["login_text"]
    assert seen["verdicts"] >= 3, seen
    assert seen["seconds_to_verdicts"] < 20, seen
    assert seen["user"] == "operator"
    data = tmp_path / "inspector" / "demo"
    assert (data / "settings.json").is_file() and (data / "station.db").is_file() and (data / "inspector.log").is_file()
    db = open_database(None, data)
    try:
        active = db.active_model()
        assert active is not None and active.family == "baseline" and active.meta["evaluation"]["image_auroc"] > 0.9
        assert db.count_inspections() >= 3
    finally:
        db.close()
    again = time.monotonic()
    setup = prepare_demo(data)
    assert not setup.trained and time.monotonic() - again < 15


def test_new_station_creates_the_first_administrator(tmp_path, qapp):
    from inspector.users import FirstAdminDialog

    seen: dict = {}

    def drive() -> None:
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, FirstAdminDialog) and widget.isVisible() and widget.ok_button.isEnabled():
                if not seen.get("mismatch"):
                    widget.password.setText("s3cret-pass")
                    widget.repeat.setText("other")
                    widget.create()
                    seen["mismatch"] = widget.message.text()
                else:
                    widget.repeat.setText("s3cret-pass")
                    widget.create()
            if isinstance(widget, MainWindow) and widget.isVisible():
                seen["user"] = (widget.context.user.name, widget.context.user.role)
                seen["manage"] = widget.users_page.add_button.isEnabled()
                widget.close()

    assert run_app(["--data-dir", str(tmp_path / "station")], drive, give_up_s=60) == 0
    assert seen["mismatch"] == "The two passwords differ."
    assert seen["user"] == ("admin", "admin") and seen["manage"]
    db = open_database(None, tmp_path / "station")
    try:
        assert db.authenticate("admin", "s3cret-pass") is not None
    finally:
        db.close()


def test_run_with_source_and_model_streams_that_model(tmp_path, qapp):
    """`inspector run --source folder:DIR --model PKG` (the CLI hands these to the GUI): the line starts after
    log-in with that package, which is registered but not made active."""
    from core.data.dataset import open_dataset
    from core.data.synthetic import write_synthetic_dataset
    from core.training.api import TrainOptions, trainer_for

    dataset = write_synthetic_dataset(tmp_path / "ds", train_good=8, train_defect=2, test_good=4, test_defect=4,
                                      size=(64, 64), seed=5)
    package = trainer_for("baseline")(open_dataset(dataset), TrainOptions(out=tmp_path / "pkg", device="cpu"),
                                      lambda _e: None)
    data = tmp_path / "station"
    db = open_database(None, data)
    db.create_user("olga", "olga-pass", "operator")
    db.close()
    seen: dict = {}

    def drive() -> None:
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, LoginDialog) and widget.isVisible() and widget.ok_button.isEnabled():
                widget.name.setText("olga")
                widget.password.setText("olga-pass")
                widget.try_login()
            if isinstance(widget, MainWindow) and widget.isVisible() and widget.live.frames_shown >= 3:
                seen["model_id"] = widget.context.line.model_id
                widget.close()

    code = run_app(["--data-dir", str(data), "--source", f"folder:{dataset / 'test' / 'defect'}",
                    "--model", str(package)], drive, give_up_s=90)
    assert code == 0 and seen.get("model_id") is not None
    db = open_database(None, data)
    try:
        model = db.get_model(seen["model_id"])
        assert Path(model.package_path) == Path(package).resolve() and not model.is_active
        assert db.count_inspections(model_id=model.id) >= 3
    finally:
        db.close()
