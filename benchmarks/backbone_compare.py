"""Time SuperSimpleNet with the papers' WideResNet-50-2 configuration against the default one, in one run.

Both are timed end to end through core.inference.detector.Detector.predict (resize + normalise, network,
map back to image size, mask, verdict; decode excluded) on one 256x256 image at a time on the CPU. The
two models are timed alternately, so load from other processes hits both alike.

    .venv/bin/python benchmarks/backbone_compare.py [--weights WRN_FILE] [--repeats 30] [--threads N] [--json FILE]

Without --weights the WideResNet has random weights: the timing is the same, the outputs are meaningless.
Prints one JSON object with p50/p90 latencies of each and ratio_p50 = wide_resnet50_2 / default.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.allocator import keep_freed_memory  # noqa: E402
from core.inference.detector import Detector  # noqa: E402
from core.inference.package import new_meta, save_package  # noqa: E402
from core.inference.result import Thresholds  # noqa: E402
from core.reporting import emit_json  # noqa: E402
from core.models.backbones import IMAGENET_NORMALISATION  # noqa: E402
from core.models.supersimplenet import SuperSimpleNet, make_config  # noqa: E402

SIZE = (256, 256)


def _detector(folder: Path, backbone: str, paper: bool, weights: str | None) -> Detector:
    config = make_config(backbone, paper=paper)
    network = SuperSimpleNet(config, pretrained=backbone == "efficientnet_lite0" or weights is not None,
                             backbone_weights=weights).eval()
    meta = new_meta(family="supersimplenet", backbone=backbone, config=config, input_size=SIZE,
                    normalisation=IMAGENET_NORMALISATION, thresholds=Thresholds(0.5, 0.5, 0.5),
                    dataset={"path": "benchmark", "hash": "none"})
    return Detector.load(save_package(folder / backbone, network, meta), device="cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="torchvision-format wide_resnet50_2 weights (.safetensors or .pth)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the station's own processes run (core.cli)
    if args.threads:
        torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        detectors = {"default": _detector(Path(tmp), "efficientnet_lite0", False, None),
                     "wide_resnet50_2": _detector(Path(tmp), "wide_resnet50_2", True, args.weights)}
        for detector in detectors.values():
            for _ in range(args.warmup):
                detector.predict([image])
        times: dict[str, list[float]] = {name: [] for name in detectors}
        for _ in range(args.repeats):
            for name, detector in detectors.items():  # alternate, so background load is shared fairly
                start = time.perf_counter()
                detector.predict([image])
                times[name].append((time.perf_counter() - start) * 1000.0)
    report: dict = {"device": "cpu", "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                    "input_size": list(SIZE), "batch": 1, "repeats": args.repeats,
                    "wide_resnet50_2_weights": args.weights or "random"}
    for name, detector in detectors.items():
        values = np.array(times[name])
        config = detector.package.meta["config"]
        report[name] = {"backbone": detector.package.meta["backbone"], "config": config,
                        "p50_ms": round(float(np.percentile(values, 50)), 2),
                        "p90_ms": round(float(np.percentile(values, 90)), 2),
                        "min_ms": round(float(values.min()), 2)}
    report["ratio_p50"] = round(report["wide_resnet50_2"]["p50_ms"] / report["default"]["p50_ms"], 2)
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
