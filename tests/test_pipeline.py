"""The inspection pipeline with real parts: folder/synthetic/viky sources, a real database (SQLite file; the
first test also on PostgreSQL when a server can be started), the real image store. The detector is a tiny
threshold rule written here (score = mean brightness), so verdicts are known in advance.

Fault tests: a detector that raises on one frame, a full queue, a database locked past its own retry
window, a device closed under the running pipeline, stop without draining, and a process killed mid-run.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.acquisition import FolderSource, SourceState, SyntheticSource, open_source, simulator_producer
from core.inference.result import Result, Thresholds
from core.pipeline import DROP_REASONS, Pipeline, PipelineConfig, run_headless
from core.storage import open_database

REPO = Path(__file__).resolve().parents[1]
VIKY = simulator_producer()
LEVELS = {"OK": 20, "REVIEW": 128, "NG": 230}  # mean grey level -> verdict under BrightnessDetector


class BrightnessDetector:
    """score = mean grey level / 255; map = pixel / 255. OK < 0.3 <= REVIEW < 0.7 <= NG.

    fail_value: an image whose top-left pixel has this value makes predict() raise (a 'poison' frame).
    delay_s: time per predict() call (a slow model)."""

    thresholds = Thresholds(ok=0.3, ng=0.7, pixel=0.5)

    def __init__(self, fail_value: int | None = None, delay_s: float = 0.0) -> None:
        self.fail_value = fail_value
        self.delay_s = delay_s
        self.calls = 0

    def predict(self, images: list[np.ndarray]) -> list[Result]:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        results = []
        for image in images:
            if self.fail_value is not None and int(image.flat[0]) == self.fail_value:
                raise RuntimeError("poison frame")
            amap = (image.astype(np.float32) / 255.0)
            amap = amap if amap.ndim == 2 else amap.mean(axis=2)
            score = float(amap.mean())
            results.append(Result(score, amap, amap >= self.thresholds.pixel, self.thresholds.verdict(score)))
        return results


def _write_folder(folder: Path, verdicts: list[str]) -> Path:
    """One 40x48 image per verdict, mean brightness set by LEVELS; a few bright pixels so NG masks differ."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for index, verdict in enumerate(verdicts):
        image = np.clip(rng.normal(LEVELS[verdict], 3, (40, 48)), 0, 255).astype(np.uint8)
        image[0, 0] = 1  # top-left pixel is the poison marker; 1 = harmless
        cv2.imwrite(str(folder / f"frame_{index:03d}.png"), image)
    return folder


def _run(source, detector, db, **config) -> dict:
    pipeline = Pipeline(source, detector, db, config=PipelineConfig(**config))
    pipeline.start()
    assert pipeline.wait(30), "acquisition did not end"
    stats = pipeline.stop()
    source.close()
    return stats


def _balanced(stats: dict) -> None:
    assert stats["in_flight"] == 0
    assert stats["frames_in"] == stats["stored"] + sum(stats["dropped"][r] for r in DROP_REASONS)
    assert stats["balanced"] is True


def test_every_frame_gets_a_row_verdict_thresholds_and_sampled_images(db, tmp_path):
    verdicts = ["OK", "REVIEW", "NG"] * 10
    folder = _write_folder(tmp_path / "frames", verdicts)
    model_id = db.register_model(tmp_path / "model", {"family": "baseline"})
    pipeline = Pipeline(FolderSource(folder), BrightnessDetector(), db, model_id=model_id,
                        config=PipelineConfig(ok_sampling=3, max_batch=4))
    pipeline.start()
    assert pipeline.wait(30)
    stats = pipeline.stop()
    _balanced(stats)
    assert stats["frames_in"] == stats["stored"] == stats["inferred"] == 30
    assert stats["verdicts"] == {"OK": 10, "NG": 10, "REVIEW": 10}
    assert stats["source"]["state"] == "finished"
    assert stats["latency_ms"]["p50"] > 0 and stats["latency_ms"]["p99"] >= stats["latency_ms"]["p50"]
    assert db.count_inspections() == 30
    assert db.verdict_counts() == {"OK": 10, "NG": 10, "REVIEW": 10}
    rows = sorted(db.list_inspections(limit=100), key=lambda r: r.frame_seq)
    assert [r.frame_seq for r in rows] == list(range(1, 31))
    assert [r.verdict for r in rows] == verdicts
    for row in rows:
        assert (row.ok_threshold, row.ng_threshold, row.pixel_threshold) == (0.3, 0.7, 0.5)
        assert row.model_id == model_id and row.latency_ms > 0 and (row.width, row.height) == (48, 40)
        assert row.camera_id == "folder:frames" and row.host_timestamp <= row.time
    # NG and REVIEW always keep image (+ mask); OK every 3rd: OK frames 1, 4, 7, 10 of 10
    kept_ok = [r for r in rows if r.verdict == "OK" and r.image_path]
    assert len(kept_ok) == 4
    assert all(r.image_path and r.mask_path for r in rows if r.verdict != "OK")
    assert all(r.mask_path is None for r in rows if r.verdict == "OK")
    assert stats["images_kept"] == 24
    # the stored image is the frame, pixel for pixel
    ng = next(r for r in rows if r.verdict == "NG")
    original = cv2.imread(str(folder / f"frame_{ng.frame_seq - 1:03d}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(db.load_image(ng.id), original)


def test_a_detector_raising_on_one_frame_loses_only_that_frame(tmp_path):
    folder = _write_folder(tmp_path / "frames", ["OK", "NG"] * 10)
    poison = cv2.imread(str(folder / "frame_007.png"), cv2.IMREAD_UNCHANGED)
    poison[0, 0] = 77
    cv2.imwrite(str(folder / "frame_007.png"), poison)
    detector = BrightnessDetector(fail_value=77)
    with open_database(None, tmp_path / "data") as db:
        stats = _run(FolderSource(folder), detector, db, max_batch=8, queue_size=32)
        _balanced(stats)
        assert stats["dropped"]["failed_inference"] == 1 and stats["stored"] == 19
        assert any("poison frame" in e and "frame 8" in e for e in stats["errors"])
        assert 8 not in {r.frame_seq for r in db.list_inspections(limit=100)}
        assert db.count_inspections() == 19


def test_a_full_queue_drops_the_oldest_frames_and_counts_them(tmp_path):
    source = SyntheticSource(size=(32, 32), rate_hz=None, pool=4, count=60)
    with open_database(None, tmp_path / "data") as db:
        stats = _run(source, BrightnessDetector(delay_s=0.02), db, queue_size=2, max_batch=1)
        _balanced(stats)
        assert stats["frames_in"] == 60
        assert stats["dropped"]["dropped_queue_full"] > 0
        assert stats["stored"] == db.count_inspections() == 60 - stats["dropped"]["dropped_queue_full"]
        seqs = {r.frame_seq for r in db.list_inspections(limit=100)}
        assert 60 in seqs  # drop-oldest: the newest frame always gets through


def test_a_database_locked_past_its_own_retry_window_loses_no_row(tmp_path):
    folder = _write_folder(tmp_path / "frames", ["OK", "REVIEW"] * 20)
    data = tmp_path / "data"
    # the database gives up after 0.2 s of lock; the pipeline's writer must retry on its own
    db = open_database(None, data, busy_timeout_ms=50, lock_retry_s=0.2)
    locker = sqlite3.connect(data / "station.db", isolation_level=None, timeout=5, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release_later() -> None:
        time.sleep(1.2)
        locker.execute("COMMIT")
        released.set()

    threading.Thread(target=release_later, daemon=True).start()
    try:
        source = open_source(f"folder:{folder}", rate_hz=100)
        stats = _run(source, BrightnessDetector(), db, write_batch=8, write_interval_s=0.05,
                     storage_retries=8, storage_retry_s=0.1)
        assert released.is_set()
        _balanced(stats)
        assert stats["write_retries"] >= 1, "the lock was never hit: the test proves nothing"
        assert stats["dropped"]["failed_storage"] == 0
        assert stats["stored"] == db.count_inspections() == 40
    finally:
        locker.close()
        db.close()


@pytest.mark.skipif(VIKY is None, reason="viky.cti (genicam wheel) not installed")
def test_device_closed_under_the_running_pipeline_is_reconnected_and_counted(tmp_path):
    source = open_source(f"genicam:{VIKY}#0", pixel_format="Mono8", roi=(0, 0, 200, 160), frame_rate=100,
                         backoff_s=(0.1, 1.0))
    states: list[str] = []
    source.add_state_listener(lambda status: states.append(status.state.value))
    with open_database(None, tmp_path / "data") as db:
        pipeline = Pipeline(source, BrightnessDetector(), db, config=PipelineConfig(max_frames=150))
        pipeline.start()
        deadline = time.monotonic() + 5
        while pipeline.stats()["frames_in"] < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        source.acquirer.device.module.close()  # the cable is pulled
        assert pipeline.wait(10), "the pipeline did not get its 150 frames after the reconnect"
        stats = pipeline.stop()
        source.close()
        _balanced(stats)
        assert stats["frames_in"] == 150
        assert stats["source"]["counters"]["reconnects"] == 1
        assert "reconnecting" in states and states[-1] in ("stopped", "closed")
        assert db.count_inspections() == stats["stored"]


def test_stop_without_draining_counts_the_queue_as_shutdown(tmp_path):
    source = SyntheticSource(size=(32, 32), rate_hz=200, pool=4)
    with open_database(None, tmp_path / "data") as db:
        pipeline = Pipeline(source, BrightnessDetector(delay_s=0.05), db,
                            config=PipelineConfig(queue_size=16, max_batch=1))
        pipeline.start()
        time.sleep(0.5)
        stats = pipeline.stop(drain=False)
        source.close()
        _balanced(stats)
        assert stats["dropped"]["shutdown"] > 0
        assert db.count_inspections() == stats["stored"]
        assert source.state == SourceState.CLOSED
        assert not any(t.name.startswith("pipeline-") for t in threading.enumerate())


def test_latest_result_slot_and_callback(tmp_path):
    folder = _write_folder(tmp_path / "frames", ["OK", "NG", "REVIEW", "NG"])
    seen = []
    with open_database(None, tmp_path / "data") as db:
        pipeline = Pipeline(FolderSource(folder), BrightnessDetector(), db, on_result=seen.append)
        assert pipeline.latest() is None
        pipeline.start()
        pipeline.wait(10)
        stats = pipeline.stop()
    latest = pipeline.latest()
    assert latest is not None and latest.index == 4 == stats["inferred"]
    assert latest.frame.sequence == 4 and latest.result.verdict.value == "NG"
    assert [item.frame.sequence for item in seen] == [1, 2, 3, 4]
    assert latest.result.mask.shape == latest.frame.image.shape


def test_run_headless_returns_the_statistics(tmp_path):
    folder = _write_folder(tmp_path / "frames", ["OK"] * 12 + ["NG"] * 3)
    stats = run_headless(f"folder:{folder}", None, None, tmp_path / "data", frames=None,
                         detector=BrightnessDetector(), ok_sampling=5)
    assert stats["frames_in"] == stats["stored"] == stats["database_rows"] == 15
    assert stats["images_kept"] == 3 + 3  # NG always, OK 1st, 6th, 11th
    assert stats["balanced"] is True and stats["running"] is False
    stats = run_headless("synthetic", None, None, tmp_path / "data2", frames=25, detector=BrightnessDetector(),
                         source_options={"rate_hz": 500, "size": (32, 32)})
    assert stats["frames_in"] == 25 and stats["stored"] + stats["dropped_total"] == 25
    with pytest.raises(ValueError, match="model package"):
        run_headless("synthetic", None, None, tmp_path / "data3", frames=1)


def test_process_killed_mid_run_leaves_a_consistent_database(tmp_path):
    data = tmp_path / "data"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_pipeline import BrightnessDetector
        from core.pipeline import PipelineConfig, run_headless
        run_headless("synthetic", None, None, {str(data)!r}, frames=None, detector=BrightnessDetector(),
                     ok_sampling=1, duration_s=60, source_options={{"rate_hz": 400, "size": (64, 64)}},
                     config=PipelineConfig(write_batch=16, write_interval_s=0.02))
    """))
    child = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 40
        rows = 0
        while time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
            if (data / "station.db").exists():
                try:
                    with sqlite3.connect(f"file:{data / 'station.db'}?mode=ro", uri=True, timeout=1) as probe:
                        rows = probe.execute("SELECT count(*) FROM inspections").fetchone()[0]
                except sqlite3.Error:
                    rows = 0
            if rows >= 100:
                break
        assert child.poll() is None, f"the run ended early: {child.stderr.read().decode()[-2000:]}"
        assert rows >= 100, "no rows were being written"
        os.kill(child.pid, signal.SIGKILL)  # mid-write, most likely: batches land every ~20 ms
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    with open_database(None, data) as db:
        report = db.check_integrity(verify_hashes=True)
        assert report.ok, report
        count = db.count_inspections()
        assert count >= rows
        seqs = sorted(r.frame_seq for r in db.list_inspections(limit=10_000))
        assert len(seqs) == len(set(seqs)) == count  # no duplicate or half-written rows
        assert all(r.image_path for r in db.list_inspections(limit=50))  # ok_sampling=1: every image kept


def test_ok_sampling_accepts_a_count_or_a_fraction():
    assert PipelineConfig(ok_sampling=100).ok_every == 100
    assert PipelineConfig(ok_sampling=0.1).ok_every == 10  # the settings file's fraction
    assert PipelineConfig(ok_sampling=1).ok_every == 1
    assert PipelineConfig(ok_sampling=0).ok_every == 0
    with pytest.raises(ValueError, match="ok_sampling"):
        PipelineConfig(ok_sampling=-1)


def test_run_headless_with_a_real_model_package(tmp_path):
    """End to end with core.inference.detector.Detector on a baseline package trained here (seconds)."""
    from core.data.dataset import open_dataset
    from core.data.synthetic import write_synthetic_dataset
    from core.training.api import TrainOptions, trainer_for

    dataset = open_dataset(write_synthetic_dataset(tmp_path / "ds", train_good=20, train_defect=4, test_good=4,
                                                   test_defect=4), require_test=False)
    model = trainer_for("baseline")(dataset, TrainOptions(out=tmp_path / "model", device="cpu"), lambda event: None)
    stats = run_headless("synthetic", model, None, tmp_path / "data", frames=30, ok_sampling=10, device="cpu",
                         source_options={"rate_hz": 200, "size": (128, 128), "defect_fraction": 0.25})
    assert stats["frames_in"] == 30 and stats["balanced"]
    assert stats["database_rows"] == stats["stored"] and stats["stored"] + stats["dropped_total"] == 30
    assert stats["model_id"] is not None
    with open_database(None, tmp_path / "data") as db:
        assert {r.model_id for r in db.list_inspections(limit=100)} == {stats["model_id"]}
        assert db.get_model(stats["model_id"]).family == "baseline"


def test_model_swap_mid_run_keeps_each_row_with_its_own_model(sqlite_db, tmp_path):
    """set_detector() while frames flow: every row carries the model id and thresholds of the detector
    that produced it, never a mix (the swap is read once per batch)."""

    class Strict(BrightnessDetector):
        thresholds = Thresholds(ok=0.1, ng=0.2, pixel=0.5)

    source = SyntheticSource(size=(32, 32), rate_hz=400, pool=4, count=400)
    first, second = BrightnessDetector(delay_s=0.002), Strict(delay_s=0.002)
    pipeline = Pipeline(source, first, sqlite_db, model_id=None, config=PipelineConfig(ok_sampling=0))
    pipeline.start()
    deadline = time.monotonic() + 20
    while (pipeline.latest() is None or pipeline.latest().index < 100) and time.monotonic() < deadline:
        time.sleep(0.01)
    pipeline.set_detector(second, model_id=None)
    swapped_at = pipeline.latest().index
    assert pipeline.wait(30)
    stats = pipeline.stop()
    source.close()
    _balanced(stats)
    latest = pipeline.latest()
    assert latest.thresholds == Strict.thresholds and pipeline.detector is second
    rows = sqlite_db.list_inspections(limit=1000)
    pairs = {(row.ok_threshold, row.ng_threshold) for row in rows}
    assert pairs == {(0.3, 0.7), (0.1, 0.2)}, pairs
    # rows of one model form one contiguous run of frames: the swap happened once, between batches
    by_seq = sorted(rows, key=lambda row: row.frame_seq)
    changes = sum(a.ok_threshold != b.ok_threshold for a, b in zip(by_seq, by_seq[1:]))
    assert changes == 1 and swapped_at < len(rows)
