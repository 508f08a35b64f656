"""Live-view benchmark: stream frames through the real Live screen and measure the Qt main thread.

Two runs, one JSON object:
  line:   the real path: synthetic camera (as fast as it goes) -> pipeline (baseline model, SQLite writer)
          -> LiveView polling the latest-result slot; until ``--frames`` frames were inferred.
  line_paced: the same with the camera at ``--paced-rate`` frames/s (a real line), ``--paced-frames`` frames.
  render: every one of ``--frames`` results drawn by LiveView.show_frame back to back from the event loop
          (image + heat map + contour + banner + strip), i.e. the cost of drawing, with nothing skipped.
  line_training: the paced line while a retrain (``--train-family``) runs in its child process.
  review: optional (--review-rows N): N inspections in the database, the Review screen opened and scrolled
          to the end while the stall is measured (the table is paged and loaded in a worker).
A heartbeat QTimer (every 5 ms) records the gaps between its ticks; the longest gap minus the interval is
the longest main-thread stall. It also records the main thread's own CPU time within each gap, which
separates work done on the main thread from waiting for a core or the GIL on a loaded machine. Run: ``python benchmarks/live_view.py [--frames 2000] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

HEARTBEAT_MS = 5


class Heartbeat:
    """Measures the longest gap between ticks of a QTimer on the main thread."""

    def __init__(self) -> None:
        from PySide6.QtCore import QTimer

        self.gaps: list[float] = []
        self.cpu: list[float] = []  # main-thread CPU time spent within each gap
        self._last = time.perf_counter()
        self._last_cpu = time.thread_time()
        self.timer = QTimer()
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.gaps.append((now - self._last) * 1000.0)
        self.cpu.append((cpu - self._last_cpu) * 1000.0)
        self._last, self._last_cpu = now, cpu

    def start(self) -> None:
        self.gaps.clear()
        self.cpu.clear()
        self._last = time.perf_counter()
        self._last_cpu = time.thread_time()
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        gaps = np.asarray(self.gaps[1:] or [0.0])
        cpu = np.asarray(self.cpu[1:] or [0.0])
        longest = int(np.argmax(gaps))
        return {"longest_stall_ms": round(float(gaps.max()) - HEARTBEAT_MS, 1),
                # how much of the longest gap the main thread itself was computing (the rest: waiting for a CPU
                # core or the GIL), and the most main-thread CPU time spent between any two heartbeats
                "longest_stall_main_thread_cpu_ms": round(float(cpu[longest]), 1),
                "max_main_thread_cpu_between_heartbeats_ms": round(float(cpu.max()), 1),
                "stall_p99_ms": round(float(np.percentile(gaps, 99)) - HEARTBEAT_MS, 1),
                "stalls_over_50ms": int((gaps - HEARTBEAT_MS > 50).sum()), "heartbeats": int(gaps.size)}


def wait(app, condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.001)
    return True


def build(tmp: Path, frames: int):
    """A station with a baseline model trained on synthetic images, the synthetic camera as fast as it goes."""
    from core.data.dataset import open_dataset
    from core.data.synthetic import write_synthetic_dataset
    from core.inference.package import read_meta
    from core.settings import Settings
    from core.storage import open_database
    from core.training.api import TrainOptions, trainer_for
    from inspector.context import AppContext
    from inspector.main_window import MainWindow

    dataset = write_synthetic_dataset(tmp / "dataset", train_good=20, train_defect=5, test_good=4, test_defect=4,
                                      size=(256, 256), seed=1)
    model = trainer_for("baseline")(open_dataset(dataset), TrainOptions(out=tmp / "model", device="cpu"),
                                    lambda _e: None)
    db = open_database(None, tmp / "data")
    engineer = db.create_user("bench", "bench-pass", "engineer")
    db.activate_model(db.register_model(model, read_meta(model), user=engineer), engineer)
    settings = Settings()
    settings.camera.source = "synthetic"
    settings.camera.frame_rate = 1000.0  # as fast as the pipeline takes them
    settings.model.device = "cpu"
    settings.storage.ok_sampling = 0.0  # keep no OK images: measure the view, not the disk
    context = AppContext(settings, tmp / "settings.json", tmp / "data", db)
    window = MainWindow(context)
    context.set_user(engineer)
    window.show()
    return window, context


def run_line(app, window, context, frames: int, rate_hz: float = 1000.0) -> dict:
    heartbeat = Heartbeat()
    live = window.live
    context.settings.camera.frame_rate = rate_hz
    context.line.start()
    wait(app, lambda: context.line.running, 60)
    shown0 = live.frames_shown
    heartbeat.start()
    started = time.perf_counter()
    wait(app, lambda: context.line.stats().get("inferred", 0) >= frames, 600)
    elapsed = time.perf_counter() - started
    stall = heartbeat.stop()
    stats = context.line.stats()
    context.line.stop()
    wait(app, lambda: not context.line.running and not context.line.busy, 60)
    shown = live.frames_shown - shown0
    return {"camera_rate_hz": rate_hz, "frames_inferred": stats.get("inferred"), "frames_in": stats.get("frames_in"),
            "dropped": stats.get("dropped"), "seconds": round(elapsed, 2),
            "pipeline_fps": round(stats.get("inferred", 0) / elapsed, 1), "frames_displayed": shown,
            "display_fps": round(shown / elapsed, 1), "display_poll_hz": round(1000 / live.frame_timer.interval(), 1),
            **stall}


def run_line_while_training(app, window, context, tmp: Path, frames: int, rate_hz: float, family: str) -> dict:
    """The paced line while a retrain runs in its child process, polled from a main-thread timer (as the
    Models screen does)."""
    from PySide6.QtCore import QTimer

    from core.training.jobs import JobSpec, TrainingJob

    job = TrainingJob(JobSpec(dataset=tmp / "dataset", family=family, out=tmp / f"retrained-{family}",
                              supervision="weak" if family != "baseline" else "unsupervised",
                              epochs=1 if family != "baseline" else None, device="cpu"))
    events = {"n": 0}
    poller = QTimer()
    poller.setInterval(150)
    poller.timeout.connect(lambda: events.__setitem__("n", events["n"] + len(job.poll())))
    job.start()
    poller.start()
    result = run_line(app, window, context, frames, rate_hz)
    training_running_at_end = not job.finished
    job.wait(timeout=600)
    poller.stop()
    return {**result, "training_family": family, "training_state": job.state.value,
            "training_messages": events["n"], "training_still_running_when_line_stopped": training_running_at_end}


def run_render(app, window, frames: int) -> dict:
    """Draw ``frames`` distinct results back to back through LiveView.show_frame from the event loop."""
    from PySide6.QtCore import QTimer

    from core.data.synthetic import plant_defect, textured_surface
    from inspector.line import LiveFrame

    rng = np.random.default_rng(0)
    pool = []
    for index in range(16):
        image = textured_surface(rng, (400, 400))
        mask = np.zeros(image.shape, bool)
        if index % 3 == 0:
            image, mask = plant_defect(image, rng)
        amap = (mask.astype(np.float32) * 2.0 + rng.random(image.shape, dtype=np.float32) * 0.5)
        pool.append((image, amap, mask))
    live = window.live
    live.frame_timer.stop()  # draw our frames, not the (stopped) line's
    heartbeat = Heartbeat()
    state = {"n": 0, "draw_ms": []}

    def step() -> None:
        if state["n"] >= frames:
            feeder.stop()
            return
        image, amap, mask = pool[state["n"] % len(pool)]
        verdict = "NG" if mask.any() else "OK"
        frame = LiveFrame(sequence=10_000_000 + state["n"], image=image, score=0.9 if mask.any() else 0.1,
                          verdict=verdict, anomaly_map=amap, mask=mask, ok=0.4, ng=0.6, pixel=1.0)
        t0 = time.perf_counter()
        live.show_frame(frame)
        state["draw_ms"].append((time.perf_counter() - t0) * 1000.0)
        state["n"] += 1

    feeder = QTimer()
    feeder.setInterval(0)
    feeder.timeout.connect(step)
    heartbeat.start()
    started = time.perf_counter()
    feeder.start()
    wait(app, lambda: state["n"] >= frames, 600)
    app.processEvents()
    elapsed = time.perf_counter() - started
    stall = heartbeat.stop()
    live.frame_timer.start()
    draw = np.asarray(state["draw_ms"])
    return {"frames_drawn": int(state["n"]), "image_size": [400, 400], "seconds": round(elapsed, 2),
            "display_fps": round(state["n"] / elapsed, 1), "draw_ms_p50": round(float(np.percentile(draw, 50)), 2),
            "draw_ms_p99": round(float(np.percentile(draw, 99)), 2), "draw_ms_max": round(float(draw.max()), 2),
            **stall}


def run_review(app, window, context, rows: int) -> dict:
    """Fill the database with ``rows`` inspections, open Review, jump to the end, measure the stall."""
    from datetime import datetime, timedelta, timezone

    from core.storage import InspectionRecord

    db = context.db
    have = db.count_inspections()
    start = datetime.now(timezone.utc) - timedelta(days=1)
    t0 = time.perf_counter()
    batch = []
    verdicts = ("OK", "OK", "OK", "NG", "REVIEW")
    for index in range(max(0, rows - have)):
        when = start + timedelta(milliseconds=index * 50)
        batch.append(InspectionRecord(time=when, camera_id="bench", frame_seq=index, camera_timestamp_ns=None,
                                      host_timestamp=when, model_id=None, score=(index % 100) / 100.0,
                                      verdict=verdicts[index % 5], ok_threshold=0.4, ng_threshold=0.6,
                                      pixel_threshold=1.0, latency_ms=20.0, width=256, height=256))
        if len(batch) == 5000:
            db.write_inspections(batch)
            batch = []
    if batch:
        db.write_inspections(batch)
    fill_s = time.perf_counter() - t0
    heartbeat = Heartbeat()
    heartbeat.start()
    t1 = time.perf_counter()
    review = window.show_page("review")
    review.refresh()
    wait(app, lambda: review.model.rowCount() >= rows and review.model.view_at(0) is not None, 120)
    first_page_s = time.perf_counter() - t1
    review.table.scrollToBottom()
    last = review.model.rowCount() - 1
    wait(app, lambda: review.model.view_at(last) is not None, 120)
    review.select_row(last)
    for _ in range(50):  # a few more event-loop turns while pages land
        app.processEvents()
        time.sleep(0.01)
    stall = heartbeat.stop()
    return {"rows": review.model.rowCount(), "fill_seconds": round(fill_s, 1),
            "first_page_seconds": round(first_page_s, 2), "loaded_rows_in_memory": review.model.loaded_rows(),
            **stall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--paced-rate", type=float, default=30.0)
    parser.add_argument("--paced-frames", type=int, default=600)
    parser.add_argument("--train-family", default="supersimplenet",
                        help="family retrained during the 'line_training' run ('' to skip that run)")
    parser.add_argument("--review-rows", type=int, default=0, help="also measure the Review screen with N rows")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)

    import torch
    from PySide6.QtWidgets import QApplication

    from inspector import workers
    from inspector.styles import apply_style

    torch.set_num_threads(1)
    app = QApplication.instance() or QApplication([])
    apply_style(app)
    with tempfile.TemporaryDirectory() as tmp:
        window, context = build(Path(tmp), args.frames)
        result = {"platform": os.environ.get("QT_QPA_PLATFORM", ""), "cpu_count": os.cpu_count(),
                  "load_average_1min_at_start": round(os.getloadavg()[0], 2),
                  "line": run_line(app, window, context, args.frames),
                  "line_paced": run_line(app, window, context, args.paced_frames, args.paced_rate),
                  "render": run_render(app, window, args.frames)}
        if args.train_family:
            result["line_training"] = run_line_while_training(app, window, context, Path(tmp), args.paced_frames,
                                                              args.paced_rate, args.train_family)
        if args.review_rows:
            result["review"] = run_review(app, window, context, args.review_rows)
        window.close()
        workers.wait_idle(30_000)
        context.db.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
