"""Soak: N frames from the simulated GenICam camera (viky.cti) at its top rate through the whole pipeline.

    python benchmarks/soak.py [--frames 10000] [--model MODEL_DIR | --noop] [--device auto] [--threads 2]
                              [--data-dir DIR] [--json FILE]

Checks, exactly: database rows + counted drops == frames received (== --frames), and resident memory
(psutil RSS, sampled every 0.25 s) growth from frame 1,000 to the last sample while the camera streams,
and its peak after frame 1,000, both < 50 MB. Model: --model DIR; without it a baseline
model is trained on synthetic images in a few seconds (--noop: a detector that says OK without looking).
The database is SQLite in a temporary directory unless --data-dir is given. Prints one JSON object; the
exit status is 0 only when both checks pass.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.acquisition import simulator_producer  # noqa: E402
from core.allocator import keep_freed_memory  # noqa: E402
from core.reporting import emit_json  # noqa: E402
from noop_detector import NoOpDetector  # noqa: E402
from core.pipeline import PipelineConfig, run_headless  # noqa: E402

RSS_LIMIT_MB = 50.0
WARMUP_FRAMES = 1000


def _train_baseline(work: Path) -> Path:
    """A baseline package trained on synthetic 128x128 surfaces (seconds)."""
    from core.data.dataset import open_dataset
    from core.data.synthetic import write_synthetic_dataset
    from core.training.api import TrainOptions, trainer_for

    class _Quiet:
        def __call__(self, event) -> None:
            pass

    dataset = open_dataset(write_synthetic_dataset(work / "dataset", train_good=30, train_defect=10, test_good=10,
                                                   test_defect=10), require_test=False)
    return Path(trainer_for("baseline")(dataset, TrainOptions(out=work / "model", device="cpu"), _Quiet()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--model", help="model package directory (default: a quickly trained baseline)")
    parser.add_argument("--noop", action="store_true", help="no model: a detector that says OK at once")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--pixel-format", default="Mono8")
    parser.add_argument("--data-dir", help="keep the database here (default: a temporary directory)")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    if simulator_producer() is None:
        print(json.dumps({"error": "viky.cti (genicam wheel) is not installed"}))
        return 2
    if args.frames <= WARMUP_FRAMES:
        parser.error(f"--frames must exceed {WARMUP_FRAMES} (memory is measured from frame {WARMUP_FRAMES})")
    keep_freed_memory()  # as the station's own processes run (core.cli): memory is measured as the station holds it
    import torch

    torch.set_num_threads(args.threads)
    process = psutil.Process()
    marks: dict[str, float] = {}
    samples: list[tuple[int, float]] = []

    def progress(stats: dict) -> None:
        rss = process.memory_info().rss / 2**20
        samples.append((stats["frames_in"], round(rss, 1)))
        if stats["source"]["state"] == "streaming":
            # the last sample while frames still flow (stopping the camera frees the producer's memory)
            marks["rss_at_last_mb"], marks["frame_at_last"] = rss, stats["frames_in"]
        if stats["frames_in"] >= WARMUP_FRAMES:
            marks["rss_peak_after_warmup_mb"] = max(rss, marks.get("rss_peak_after_warmup_mb", 0.0))
        if "rss_at_warmup_mb" not in marks and stats["frames_in"] >= WARMUP_FRAMES:
            marks["rss_at_warmup_mb"] = rss
            marks["frame_at_warmup"] = stats["frames_in"]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        detector = NoOpDetector() if args.noop else None
        model = None if args.noop else (Path(args.model) if args.model else _train_baseline(work))
        data_dir = Path(args.data_dir) if args.data_dir else work / "data"
        start = time.perf_counter()
        stats = run_headless(
            "genicam", str(model) if model else None, None, data_dir, frames=args.frames, detector=detector,
            ok_sampling=100, device=args.device,
            source_options={"pixel_format": args.pixel_format, "frame_rate": 200.0},
            config=PipelineConfig(queue_size=16, max_batch=8), progress=progress, progress_interval_s=0.25)
        elapsed = time.perf_counter() - start
        rss_closed = process.memory_info().rss / 2**20
    received = stats["frames_in"]
    rows = stats["database_rows"]
    accounted = rows + stats["dropped_total"]
    base = marks.get("rss_at_warmup_mb", float("nan"))
    growth = marks.get("rss_at_last_mb", float("nan")) - base
    peak_growth = marks.get("rss_peak_after_warmup_mb", float("nan")) - base
    report = {
        "benchmark": "soak", "source": "viky.cti at its top rate (AcquisitionFrameRate 200)",
        "model": str(args.model or ("no-op detector" if args.noop else "baseline trained on synthetic images")),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
        "frames_asked": args.frames, "frames_received": received, "database_rows": rows,
        "dropped": stats["dropped"], "rows_plus_drops": accounted,
        "exact": received == args.frames and accounted == received,
        "seconds": round(elapsed, 1), "received_fps": round(received / elapsed, 1),
        "inferred_fps_mean": round(stats["inferred"] / elapsed, 1),
        "latency_ms": stats["latency_ms"], "inference_ms_per_frame": stats["inference_ms_per_frame"],
        "verdicts": stats["verdicts"], "images_kept": stats["images_kept"],
        "camera": stats["source"],
        "rss_at_frame_mb": {str(marks.get("frame_at_warmup", "n/a")): round(marks.get("rss_at_warmup_mb", float("nan")), 1),
                            str(marks.get("frame_at_last", "n/a")): round(marks.get("rss_at_last_mb", float("nan")), 1)},
        "rss_after_close_mb": round(rss_closed, 1),
        "rss_growth_mb": round(growth, 1), "rss_peak_growth_mb": round(peak_growth, 1), "rss_limit_mb": RSS_LIMIT_MB,
        "rss_samples_mb": {str(f): mb for f, mb in samples[:: max(1, len(samples) // 20)]},
    }
    report["passed"] = bool(report["exact"] and growth < RSS_LIMIT_MB and peak_growth < RSS_LIMIT_MB)
    emit_json(report, args.json_out)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
