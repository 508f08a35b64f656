"""Throughput of the pipeline's plumbing: no-op detector, 400x400 Mono8 frames, real SQLite database.

    python benchmarks/pipeline_throughput.py [--frames 3000] [--cores 2] [--viky] [--json FILE]

Run "lossless": frames come from an in-memory synthetic source as fast as the pipeline takes them
(acquisition waits instead of dropping), so frames/s is what acquisition -> inference worker -> storage
writer (batched SQLite transactions, every 100th OK image into the image store) can carry. Target: >= 150
frames/s on 2 cores, so the model, not the plumbing, sets the pace.
--viky adds a second run fed by the simulated GenICam camera at its top rate (drops counted, not waited).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.acquisition import SyntheticSource, open_source, simulator_producer  # noqa: E402
from core.reporting import emit_json  # noqa: E402
from noop_detector import NoOpDetector  # noqa: E402
from core.pipeline import Pipeline, PipelineConfig  # noqa: E402
from core.storage import open_database  # noqa: E402


def _run(source, frames: int, data_dir: Path, config: PipelineConfig) -> dict:
    db = open_database(None, data_dir)
    try:
        pipeline = Pipeline(source, NoOpDetector(), db, config=config)
        start = time.perf_counter()
        pipeline.start()
        pipeline.wait()
        acquired = time.perf_counter()
        stats = pipeline.stop(drain=True)
        elapsed = time.perf_counter() - start
        rows = db.count_inspections()
    finally:
        source.close()
        db.close()
    return {
        "frames": stats["frames_in"], "stored_rows": rows, "dropped": stats["dropped"],
        "balanced": stats["balanced"] and rows == stats["stored"],
        "seconds": round(elapsed, 3), "frames_per_s": round(stats["stored"] / elapsed, 1),
        "acquisition_seconds": round(acquired - start, 3),
        "latency_ms": stats["latency_ms"], "mean_batch": stats["mean_batch"], "write_batches": stats["write_batches"],
        "images_kept": stats["images_kept"], "source": stats["source"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--cores", type=int, default=2, help="pin the process to this many CPU cores (Linux)")
    parser.add_argument("--viky", action="store_true", help="also run from the simulated camera at its top rate")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(available[: args.cores]))
    report: dict = {
        "benchmark": "pipeline_throughput", "frame": "400x400 Mono8", "detector": "no-op",
        "database": "SQLite (WAL) in a temporary directory", "ok_sampling": 100,
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "target_frames_per_s": 150,
    }
    config = PipelineConfig(queue_size=16, max_batch=16, max_frames=args.frames, ok_sampling=100,
                            drop_when_full=False)
    with tempfile.TemporaryDirectory() as tmp:
        source = SyntheticSource(size=(400, 400), rate_hz=None, pool=16, defect_fraction=0.0)
        report["lossless"] = _run(source, args.frames, Path(tmp) / "a", config)
        if args.viky and simulator_producer() is not None:
            camera = open_source("genicam", pixel_format="Mono8", roi=(0, 0, 400, 400), frame_rate=200.0)
            live = PipelineConfig(queue_size=16, max_batch=16, max_frames=args.frames, ok_sampling=100)
            report["viky_top_rate"] = _run(camera, args.frames, Path(tmp) / "b", live)
    report["meets_target"] = report["lossless"]["frames_per_s"] >= 150 and report["lossless"]["balanced"]
    emit_json(report, args.json_out)
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
