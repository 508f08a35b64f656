"""The real station window, offscreen: stream, verdicts and rows, keyboard tagging, retrain, promote, roll back,
calibrate, roles. Real parts throughout: SQLite file, folder source, baseline model, training in a child process."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402

from core.data.dataset import open_dataset  # noqa: E402
from core.data.synthetic import write_synthetic_dataset  # noqa: E402
from core.inference.detector import Detector  # noqa: E402
from core.inference.mask_refinement import MaskRefinement  # noqa: E402
from core.inference.package import read_meta  # noqa: E402
from core.settings import Settings, load_settings, save_settings  # noqa: E402
from core.storage import PermissionDenied, open_database  # noqa: E402
from core.training.api import TrainOptions, trainer_for  # noqa: E402

pytest.importorskip("pytestqt")

from inspector import workers  # noqa: E402
from inspector.context import AppContext  # noqa: E402
from inspector.main_window import MainWindow  # noqa: E402
from inspector.styles import apply_style  # noqa: E402
from inspector.users import LoginDialog  # noqa: E402

WAIT = 30_000


@dataclass
class Station:
    root: Path
    data_dir: Path
    frames_dir: Path
    settings_path: Path
    model_id: int


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A trained baseline package and a folder of frames (good and defective), made once per module."""
    root = tmp_path_factory.mktemp("template")
    dataset = write_synthetic_dataset(root / "dataset", train_good=16, train_defect=4, test_good=12, test_defect=8,
                                      size=(96, 96), seed=3)
    trainer_for("baseline")(open_dataset(dataset), TrainOptions(out=root / "model", supervision="unsupervised",
                                                                device="cpu"), lambda _e: None)
    frames = root / "frames"
    frames.mkdir()
    for kind in ("good", "defect"):
        for path in sorted((dataset / "test" / kind).iterdir()):
            (frames / f"{kind}_{path.name}").write_bytes(path.read_bytes())
    return root


@pytest.fixture
def station(template, tmp_path) -> Station:
    """A fresh data directory with the database, two users and the template model active."""
    import shutil

    data_dir = tmp_path / "data"
    model_dir = data_dir / "models" / "first"
    shutil.copytree(template / "model", model_dir)
    db = open_database(None, data_dir)
    engineer = db.create_user("eve", "eve-secret", "engineer")
    db.create_user("otto", "otto-secret", "operator")
    model_id = db.register_model(model_dir, read_meta(model_dir), user=engineer)
    db.activate_model(model_id, engineer)
    db.close()
    settings = Settings()
    settings.camera.source = f"folder:{template / 'frames'}"
    settings.camera.frame_rate = 40.0
    settings.storage.ok_sampling = 1.0  # keep every image, so every row can be tagged and exported
    settings.model.device = "cpu"
    settings.model.test_fraction = 0.3
    settings_path = save_settings(settings, data_dir / "settings.json")
    return Station(tmp_path, data_dir, template / "frames", settings_path, model_id)


@pytest.fixture
def app_window(station, qtbot):
    """(window, context) logged in as a function of the test: call ``login(name)``."""
    from PySide6.QtWidgets import QApplication

    apply_style(QApplication.instance())
    db = open_database(None, station.data_dir)
    context = AppContext(load_settings(station.settings_path), station.settings_path, station.data_dir, db)
    window = MainWindow(context)
    qtbot.addWidget(window)
    errors: list[str] = []
    context.error.connect(errors.append)
    window.errors = errors
    window.show()

    def login(name: str, password: str) -> None:
        context.set_user(db.authenticate(name, password))

    window.login = login
    yield window, context
    window.close()
    workers.wait_idle(20_000)
    db.close()


def stream(qtbot, window, context, frames: int, timeout: int = WAIT) -> None:
    """Run the line until ``frames`` frames are shown; ``timeout`` (ms) guards against a hang, it times nothing."""
    context.line.start()
    qtbot.waitUntil(lambda: context.line.running, timeout=WAIT)
    qtbot.waitUntil(lambda: window.live.frames_shown >= frames, timeout=timeout)
    context.line.stop()
    qtbot.waitUntil(lambda: not context.line.running and not context.line.busy, timeout=WAIT)


def test_login_dialog_accepts_right_password_only(station, qtbot):
    db = open_database(None, station.data_dir)
    try:
        dialog = LoginDialog(db, [("eve", "eve-secret", "engineer")])
        qtbot.addWidget(dialog)
        assert dialog.name.text() == "eve"
        dialog.password.setText("wrong")
        qtbot.mouseClick(dialog.ok_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "Wrong user name or password" in dialog.message.text(), timeout=WAIT)
        assert dialog.user is None
        dialog.password.setText("eve-secret")
        with qtbot.waitSignal(dialog.accepted, timeout=WAIT):
            qtbot.mouseClick(dialog.ok_button, Qt.MouseButton.LeftButton)
        assert dialog.user.name == "eve" and dialog.user.role == "engineer"
    finally:
        workers.wait_idle()
        db.close()


def test_stream_shows_verdicts_and_writes_rows(app_window, qtbot):
    window, context = app_window
    window.login("otto", "otto-secret")  # operators may start and stop the line
    assert window.live.start_button.isEnabled()
    qtbot.mouseClick(window.live.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: context.line.running, timeout=WAIT)
    qtbot.waitUntil(lambda: window.live.frames_shown >= 8, timeout=WAIT)
    assert window.live.banner.label.text() in ("OK", "NG", "REVIEW")
    assert window.live.banner.label.property("verdict") in ("OK", "NG", "REVIEW")
    assert len(window.live.strip.history) >= 8 and set(window.live.strip.history) <= {"OK", "NG", "REVIEW"}
    qtbot.waitUntil(lambda: window.live.stat_labels["frames"].text() != "—", timeout=WAIT)
    assert window.live.state_label.text().startswith("streaming")
    qtbot.mouseClick(window.live.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not context.line.running and not context.line.busy, timeout=WAIT)
    rows = context.db.count_inspections()
    assert rows >= window.live.frames_shown >= 8
    actions = lambda: [entry.action for entry in context.db.list_audit(limit=20)]  # noqa: E731
    assert window.errors == []
    qtbot.waitUntil(lambda: "line_start" in actions() and "line_stop" in actions(), timeout=WAIT)
    assert window.errors == []


def test_bad_source_is_reported_and_the_app_keeps_running(app_window, qtbot, station):
    window, context = app_window
    window.login("eve", "eve-secret")
    context.settings.camera.source = f"folder:{station.root / 'no-such-folder'}"
    context.line.start()
    qtbot.waitUntil(lambda: bool(window.errors), timeout=WAIT)
    assert "The line could not start" in window.errors[0] and "no-such-folder" in window.errors[0]
    assert window.messages.isVisible() and "no-such-folder" in window.messages.text()
    assert not context.line.running and window.live.start_button.isEnabled()


def test_review_keyboard_tagging(app_window, qtbot):
    window, context = app_window
    window.login("otto", "otto-secret")
    stream(qtbot, window, context, 6)
    total = context.db.count_inspections()
    review = window.show_page("review")
    qtbot.waitUntil(lambda: review.model.rowCount() == total and review.model.view_at(0) is not None, timeout=WAIT)
    review.select_row(0)
    review.table.setFocus()
    first = review.model.view_at(0)
    qtbot.keyClick(review.table, Qt.Key.Key_G)
    qtbot.waitUntil(lambda: context.db.get_inspection(first.id).label == "OK", timeout=WAIT)
    assert review.table.currentIndex().row() == 1  # moved on to the next row
    second = review.model.view_at(1)
    qtbot.keyClick(review.table, Qt.Key.Key_N)
    qtbot.waitUntil(lambda: context.db.get_inspection(second.id).label == "NG", timeout=WAIT)
    qtbot.keyClick(review.table, Qt.Key.Key_Up)
    assert review.table.currentIndex().row() == 1
    qtbot.keyClick(review.table, Qt.Key.Key_G)  # change NG -> OK: stored and audited with who
    qtbot.waitUntil(lambda: context.db.get_inspection(second.id).label == "OK", timeout=WAIT)
    view = context.db.get_inspection(second.id)
    assert view.label_user == "otto"
    qtbot.waitUntil(lambda: review.model.view_at(1).label == "OK", timeout=WAIT)  # the table shows it
    assert any(e.action == "retag" and e.detail.get("old") == "NG" for e in context.db.list_audit(limit=10))
    # bulk: select rows 2..4 and tag them NG in one go
    review.select_row(2)
    for row in (3, 4):
        review.table.selectionModel().select(review.model.index(row, 0),
                                             review.table.selectionModel().SelectionFlag.Select
                                             | review.table.selectionModel().SelectionFlag.Rows)
    qtbot.mouseClick(review.bulk_ng, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: context.db.count_inspections(label="NG") == 3, timeout=WAIT)
    assert window.errors == []


def test_review_mask_brush_stores_a_mask(app_window, qtbot):
    window, context = app_window
    window.login("otto", "otto-secret")
    stream(qtbot, window, context, 3)
    review = window.show_page("review")
    qtbot.waitUntil(lambda: review.model.view_at(0) is not None, timeout=WAIT)
    review.select_row(0)
    view = review.model.view_at(0)
    qtbot.waitUntil(lambda: review.image_view.mask_item.image is not None, timeout=WAIT)
    review.brush_box.setChecked(True)
    review.brush_size.setValue(4)
    from PySide6.QtCore import QPointF

    for x in range(30, 41):  # the points a left-drag along row 15 hands to the brush
        review.image_view.mask_item.drawAt(QPointF(x + 0.5, 15.5))
    qtbot.mouseClick(review.save_mask, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: context.db.load_label_mask(view.id) is not None, timeout=WAIT)
    mask = context.db.load_label_mask(view.id)
    assert mask[11:20, 30:41].all()             # a 9-pixel-high stroke from x=30 to x=40 around row 15
    assert not mask[:10].any() and not mask[21:].any() and not mask[:, :25].any()
    assert context.db.get_inspection(view.id).label == "NG"


def _tag_by_verdict(context) -> None:
    """Tag every stored inspection: NG-verdicts NG, the rest OK (an operator's plausible first pass)."""
    user = context.user
    rows = context.db.list_inspections(limit=1000)
    context.db.tag_many([r.id for r in rows if r.verdict == "NG"], "NG", user)
    context.db.tag_many([r.id for r in rows if r.verdict != "NG"], "OK", user)


def _hold_tag_tasks(monkeypatch) -> list:
    """Hold the review page's tag tasks (single and bulk) instead of running them; other tasks run as usual."""
    held: list = []
    real_submit = workers.submit

    def hold_tags(fn, on_done=None, on_error=None, name=""):
        if name in ("tag", "tag-many"):
            held.append((fn, on_done))
        else:
            real_submit(fn, on_done, on_error, name)
    monkeypatch.setattr(workers, "submit", hold_tags)
    return held


def _run_backwards(held: list) -> None:
    """The thread pool may run and deliver tasks in any order: the newest task's write runs first, the oldest
    one's answer arrives last."""
    results = [fn() for fn, _ in reversed(held)]
    for (_, on_done), result in zip(reversed(held), results):
        on_done(result)


def test_two_quick_tags_of_one_image_keep_the_second_whatever_order_the_tasks_run(app_window, qtbot, monkeypatch):
    window, context = app_window
    window.login("otto", "otto-secret")
    stream(qtbot, window, context, 3)
    review = window.show_page("review")
    qtbot.waitUntil(lambda: review.model.view_at(2) is not None, timeout=WAIT)
    first, second = review.model.view_at(0), review.model.view_at(1)
    held = _hold_tag_tasks(monkeypatch)
    for label in ("NG", "OK"):   # the operator presses N, then G, on the same image
        review.select_row(0)
        review.tag_current(label)
    assert len(held) == 2
    _run_backwards(held)
    assert context.db.get_inspection(first.id).label == "OK"
    assert review.model.view_at(0).label == "OK"
    # a bulk NG of rows 0 and 1, then a single OK of row 0: row 0 ends OK, row 1 NG
    held.clear()
    told: list[str] = []
    context.info.connect(told.append)
    review.select_row(0)
    review.table.selectionModel().select(review.model.index(1, 0), review.table.selectionModel().SelectionFlag.Select
                                         | review.table.selectionModel().SelectionFlag.Rows)
    review.tag_selected("NG")
    review.select_row(0)
    review.tag_current("OK")
    assert len(held) == 2
    _run_backwards(held)
    assert [context.db.get_inspection(v.id).label for v in (first, second)] == ["OK", "NG"]
    assert [review.model.view_at(row).label for row in (0, 1)] == ["OK", "NG"]
    assert told[-1] == "1 inspection(s) tagged NG."   # the bulk write counts only the row it still owned
    # a single NG of row 1, then a bulk OK of rows 0 and 1: both end OK
    held.clear()
    review.select_row(1)
    review.tag_current("NG")
    review.select_row(0)
    review.table.selectionModel().select(review.model.index(1, 0), review.table.selectionModel().SelectionFlag.Select
                                         | review.table.selectionModel().SelectionFlag.Rows)
    review.tag_selected("OK")
    _run_backwards(held)
    assert [context.db.get_inspection(v.id).label for v in (first, second)] == ["OK", "OK"]
    assert [review.model.view_at(row).label for row in (0, 1)] == ["OK", "OK"]
    assert told[-1] == "1 inspection(s) tagged OK."   # row 0 was OK already
    assert window.errors == []


def test_a_package_with_a_mask_refinement_streams_with_refined_masks_and_says_so(app_window, qtbot, station):
    """The live path with a dense-CRF refinement in the active package: no error, masks drawn, the Models page
    names it and what the trainer measured when it chose it."""
    window, context = app_window
    window.login("eve", "eve-secret")
    refined_dir = station.data_dir / "models" / "refined"  # the baseline's map is no probability: SuperSimpleNet
    trainer_for("supersimplenet")(open_dataset(station.frames_dir.parent / "dataset"),
                                  TrainOptions(out=refined_dir, supervision="full", epochs=1, device="cpu",
                                               extra={"calibration_folds": 0}), lambda _e: None)
    meta = json.loads((refined_dir / "model.json").read_text())
    meta["mask_refinement"] = MaskRefinement(margin=8).to_dict()
    meta.setdefault("calibration", {})["mask_refinement"] = {"images": 40, "miou_raw": 0.31,
                                                             "miou_candidates": [0.42, 0.40, 0.39], "chosen": 0}
    (refined_dir / "model.json").write_text(json.dumps(meta))
    db = context.db
    db.activate_model(db.register_model(refined_dir, read_meta(refined_dir), user=context.user), context.user)

    # a SuperSimpleNet with a dense CRF per frame: on a loaded 2-core CI machine 20 frames took over 30 s
    stream(qtbot, window, context, 20, timeout=4 * WAIT)
    rows = db.list_inspections(limit=100)
    assert window.errors == [] and len(rows) >= 20
    stored_masks = {row.id: db.load_mask(row.id) for row in rows if row.mask_path is not None}
    found = [row for row in rows if row.id in stored_masks and stored_masks[row.id].any()]
    assert found, "some frames have a defect mask"
    # what the line stored is the refined mask for every frame as it was stored; the CRF leaves a mask of a few
    # pixels as it is, so only some frames tell refined from raw: the last frame alone is one of them 2 times in 3
    refined, raw = Detector.load(refined_dir, device="cpu"), Detector.load(refined_dir, device="cpu",
                                                                           refine_masks=False)
    images = [db.load_image(row.id) for row in found]
    stored = [stored_masks[row.id] for row in found]
    assert all(np.array_equal(mask, result.mask) for mask, result in zip(stored, refined.predict(images)))
    assert any(not np.array_equal(mask, result.mask) for mask, result in zip(stored, raw.predict(images)))
    page = window.show_page("model")
    page.reload()
    qtbot.waitUntil(lambda: "masks snapped to image edges" in page.active_label.text(), timeout=WAIT)
    assert "mIoU on 40 training masks 0.31 → 0.42" in page.active_label.text()


def test_retrain_promote_roll_back_and_calibrate(app_window, qtbot, station):
    window, context = app_window
    window.login("eve", "eve-secret")
    stream(qtbot, window, context, 30)
    _tag_by_verdict(context)
    assert context.db.count_inspections(label="NG") > 0 and context.db.count_inspections(label="OK") > 0
    context.line.start()  # retrain and promote while the line runs
    qtbot.waitUntil(lambda: context.line.running, timeout=WAIT)

    page = window.show_page("model")
    page.family_box.setCurrentText("baseline")
    with qtbot.waitSignal(page.retrain_finished, timeout=120_000) as finished:
        qtbot.mouseClick(page.retrain_button, Qt.MouseButton.LeftButton)
    new_id, state = finished.args
    assert state == "done", window.errors
    assert page.progress.value() == 1000
    assert "evaluation:" in page.log_view.toPlainText()
    assert "active model on the same images" in page.log_view.toPlainText()
    assert page.compare_figures and "image_auroc" in page.compare_figures  # same held-back images
    qtbot.waitUntil(lambda: "same held-back" in page.compare_note.text(), timeout=WAIT)
    new = context.db.get_model(new_id)
    assert not new.is_active and "image_auroc" in new.meta["evaluation"]
    qtbot.waitUntil(lambda: context.db.list_training_runs(limit=1)[0].status == "succeeded", timeout=WAIT)
    run = context.db.list_training_runs(limit=1)[0]
    assert run.result_path and run.progress == 1.0 and "registered as model" in run.log
    qtbot.waitUntil(lambda: page.compare.item(0, 1) is not None and page.compare.item(0, 1).text() != "—",
                    timeout=WAIT)

    # promote: the line keeps running and picks the new model up
    qtbot.waitUntil(lambda: any(m.id == new_id for m in page.models), timeout=WAIT)
    page.table.selectRow([m.id for m in page.models].index(new_id))
    qtbot.mouseClick(page.promote_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: context.db.active_model().id == new_id, timeout=WAIT)
    qtbot.waitUntil(lambda: context.line.model_id == new_id and context.line.pipeline.detector.name == Path(new.package_path).name,
                    timeout=WAIT)
    assert context.line.running
    shown = window.live.frames_shown
    qtbot.waitUntil(lambda: window.live.frames_shown > shown + 3, timeout=WAIT)
    qtbot.waitUntil(lambda: context.db.count_inspections(model_id=new_id) > 0, timeout=WAIT)

    # roll back
    qtbot.waitUntil(lambda: page.rollback_button.isEnabled(), timeout=WAIT)
    qtbot.mouseClick(page.rollback_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: context.db.active_model().id == station.model_id, timeout=WAIT)
    qtbot.waitUntil(lambda: context.line.model_id == station.model_id, timeout=WAIT)
    context.line.stop()
    qtbot.waitUntil(lambda: not context.line.running and not context.line.busy, timeout=WAIT)

    # calibrate the (rolled back) active model from target rates, then apply
    calibrate = window.show_page("calibrate")
    qtbot.waitUntil(lambda: calibrate.model is not None and calibrate.model.id == station.model_id
                    and calibrate.labels.size > 0, timeout=WAIT)
    assert not calibrate.guard.isVisible()
    assert calibrate.from_rates.isEnabled()
    calibrate.miss_spin.setValue(0.0)
    calibrate.alarm_spin.setValue(0.0)
    qtbot.mouseClick(calibrate.from_rates, Qt.MouseButton.LeftButton)
    ok, ng = calibrate.thresholds()
    assert 0.0 <= ok <= ng <= 1.0
    scores, labels = calibrate.scores, calibrate.labels
    assert (scores[labels == 1] >= ok).all()   # no tagged defect passes as OK at a 0 % miss rate
    assert (scores[labels == 0] < ng).all()    # no good part is called NG at a 0 % false-alarm rate
    package = Path(context.db.active_model().package_path)
    trained = json.loads((package / "model.json").read_text()).get("calibration", {})
    qtbot.mouseClick(calibrate.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: abs(json.loads((package / "model.json").read_text())["thresholds"]["ng"] - ng) < 1e-5,
                    timeout=WAIT)
    qtbot.waitUntil(lambda: abs(context.db.active_model().meta["thresholds"]["ok"] - ok) < 1e-5, timeout=WAIT)
    assert any(e.action == "update_model_meta" for e in context.db.list_audit(limit=10))
    # the package now says where its thresholds came from, and the page tells the engineer
    record = json.loads((package / "model.json").read_text())["calibration"]
    assert record["source"] == "tagged images, on the Calibrate page"
    assert record.get("mask_refinement") == trained.get("mask_refinement")  # the trainer's choice stays on record
    assert (record["good"], record["defect"]) == (int((labels == 0).sum()), int((labels == 1).sum()))
    calibrate.reload()
    in_review = (scores >= ok) & (scores < ng)
    assert record["review"] == {"good": round(float(in_review[labels == 0].mean()), 4),
                                "defect": round(float(in_review[labels == 1].mean()), 4)}
    said = (f"Its thresholds were set on {record['good']} good and {record['defect']} defect tagged images, "
            f"on the Calibrate page. They sent {record['review']['good']:.0%} of those good and "
            f"{record['review']['defect']:.0%} of those defect images to REVIEW.")
    qtbot.waitUntil(lambda: said in calibrate.source_label.text(), timeout=WAIT)
    assert window.errors == []


def test_retrain_can_be_cancelled_and_changes_nothing(app_window, qtbot):
    window, context = app_window
    window.login("eve", "eve-secret")
    stream(qtbot, window, context, 12)
    _tag_by_verdict(context)
    page = window.show_page("model")
    with qtbot.waitSignal(page.retrain_finished, timeout=120_000) as finished:
        qtbot.mouseClick(page.retrain_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: page.cancel_button.isEnabled(), timeout=WAIT)
        qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
    assert finished.args == [None, "cancelled"]
    assert "cancelled" in page.stage_label.text() and page.retrain_button.isEnabled()
    qtbot.waitUntil(lambda: context.db.list_training_runs(limit=1)[0].status == "cancelled", timeout=WAIT)
    assert len(context.db.list_models()) == 1  # nothing registered, the active model unchanged


def test_calibrate_without_ng_tags_says_so(app_window, qtbot):
    window, context = app_window
    window.login("eve", "eve-secret")
    stream(qtbot, window, context, 4)
    rows = context.db.list_inspections(limit=100)
    context.db.tag_many([r.id for r in rows], "OK", context.user)
    calibrate = window.show_page("calibrate")
    calibrate.reload()
    qtbot.waitUntil(lambda: calibrate.labels.size == len(rows), timeout=WAIT)
    before = calibrate.thresholds()
    assert calibrate.guard.isVisible() and "No image is tagged NG" in calibrate.guard.text()
    assert not calibrate.from_rates.isEnabled()
    calibrate.set_from_rates()  # even when called directly, no threshold is invented
    assert calibrate.thresholds() == before
    assert "— (no such tags)" in calibrate.readout.text()


def test_operator_may_not_retrain_promote_calibrate_or_change_settings(app_window, qtbot):
    window, context = app_window
    window.login("otto", "otto-secret")
    page = window.model_page
    assert not page.retrain_button.isEnabled()
    assert not page.promote_button.isEnabled() and not page.rollback_button.isEnabled()
    assert not window.calibrate.apply_button.isEnabled()
    assert not window.settings_page.save_button.isEnabled()
    page.retrain()  # even when called past the disabled button
    qtbot.waitUntil(lambda: bool(window.errors), timeout=WAIT)
    assert "Not allowed" in window.errors[-1] and "retrain" in window.errors[-1]
    assert page.job is None and context.db.list_training_runs() == []
    with pytest.raises(PermissionDenied):
        context.db.create_training_run("baseline", "weak", "/tmp/x", context.user)
    assert not window.settings_page.save()


def test_settings_page_saves_validated_file(app_window, qtbot, station):
    window, context = app_window
    window.login("eve", "eve-secret")
    page = window.show_page("settings")
    page.frame_rate.setValue(12.5)
    page.roi_set.setChecked(True)
    for spin, value in zip(page.roi, (0, 0, 64, 48)):
        spin.setValue(value)
    assert page.save()
    saved = load_settings(station.settings_path)
    assert saved.camera.frame_rate == 12.5 and saved.camera.roi == [0, 0, 64, 48]
    page.source.setText("usb-camera-3")
    assert not page.save()
    assert "camera.source" in page.message.text()
    assert load_settings(station.settings_path).camera.source.startswith("folder:")
    qtbot.waitUntil(lambda: any(e.action == "settings" for e in context.db.list_audit(limit=5)), timeout=WAIT)


def test_qt_binding_does_not_leak_references_to_none(qapp):
    """PySide6 6.12.0 on Python 3.11 drops a reference to None on every call of a method that returns
    nothing (QLabel.setText, QPainter.setPen, ...); a station GUI then dies with 'none_dealloc' after a few
    minutes of painting. Guard against installing such a build again (pyproject excludes it)."""
    import sys

    from PySide6.QtWidgets import QLabel

    label = QLabel("x")
    before = sys.getrefcount(None)
    for _ in range(5000):
        label.setText("a")
    assert abs(sys.getrefcount(None) - before) < 100, "this PySide6 build leaks references to None (use < 6.12)"


def test_errors_reach_the_user_in_plain_words(qtbot):
    import errno

    from core.storage import PermissionDenied as Denied

    assert workers.plain_error(OSError(errno.ENOSPC, "No space left on device")).startswith("The disk is full")
    assert workers.plain_error(Denied("user 'otto' (operator) may not retrain")).startswith("Not allowed:")
    assert workers.plain_error(ValueError("")) == "ValueError"
    got: list[str] = []

    def boom():
        raise OSError(errno.ENOSPC, "No space left on device")

    workers.submit(boom, on_error=got.append)
    qtbot.waitUntil(lambda: bool(got), timeout=WAIT)
    assert got[0].startswith("The disk is full")


def test_admin_adds_a_user_and_changes_a_role(app_window, qtbot, station):
    window, context = app_window
    db = context.db
    db.create_user("ada", "ada-secret", "admin")
    window.login("ada", "ada-secret")
    page = window.show_page("users")
    page.new_name.setText("nina")
    page.new_password.setText("nina-secret")
    page.new_role.setCurrentText("operator")
    qtbot.mouseClick(page.add_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any(u.name == "nina" for u in page.user_list), timeout=WAIT)
    page.users.selectRow([u.name for u in page.user_list].index("nina"))
    page.change_role.setCurrentText("engineer")
    qtbot.mouseClick(page.role_button, Qt.MouseButton.LeftButton)
    role_of = lambda name: next(u for u in db.list_users() if u.name == name)  # noqa: E731
    qtbot.waitUntil(lambda: role_of("nina").role == "engineer", timeout=WAIT)
    page.users.selectRow([u.name for u in page.user_list].index("nina"))
    qtbot.mouseClick(page.active_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not role_of("nina").active, timeout=WAIT)
    assert db.authenticate("nina", "nina-secret") is None  # a disabled user cannot log in
    qtbot.waitUntil(lambda: page.audit.rowCount() > 0 and page.audit.item(0, 0) is not None, timeout=WAIT)
    window.login("otto", "otto-secret")
    assert not page.add_button.isEnabled() and not page.role_button.isEnabled()
