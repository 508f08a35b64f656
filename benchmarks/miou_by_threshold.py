"""mIoU of a model package's masks as a function of the pixel threshold, per split and defect type.

Usage:
    .venv/bin/python benchmarks/miou_by_threshold.py MODEL_DIR DATASET [--splits train test] [--threads 1]

A diagnostic for the pixel threshold a package calibrated on its training images: it predicts every defect
image with a mask in each split, then prints, for thresholds 0.05..0.95, the mean per-image IoU (the
``miou`` of ``inspector evaluate``), the best threshold and the per-type mIoU at the best and at the
package's threshold, and an upper bound for any threshold rule: the mIoU when each image gets the best of
ten quantiles of its own map as threshold, chosen with its own mask (an oracle). If the package's threshold sits
at the test optimum and even the oracle misses a bar, mIoU is limited by the maps, not by calibration. Reading
the test split here is for diagnosis only; never choose a threshold from it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from core.data.dataset import load_samples, open_dataset
from core.inference.detector import Detector
from core.metrics import iou

THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)
ORACLE_QUANTILES = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)


def ious_by_threshold(detector: Detector, samples, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(IoU per (threshold, image): (len(THRESHOLDS), len(samples)); each image's best IoU over thresholds at
    ORACLE_QUANTILES of its own map: (len(samples),))."""
    out = np.empty((len(THRESHOLDS), len(samples)))
    oracle = np.empty(len(samples))
    for start in range(0, len(samples), batch_size):
        loaded = load_samples(samples[start:start + batch_size])
        results = detector.predict([image for image, _ in loaded])
        for offset, ((_, mask), result) in enumerate(zip(loaded, results)):
            amap = result.anomaly_map
            for row, threshold in enumerate(THRESHOLDS):
                out[row, start + offset] = iou(amap >= threshold, mask)
            oracle[start + offset] = max(iou(amap >= q, mask) for q in np.quantile(amap, ORACLE_QUANTILES))
    return out, oracle


def per_type(ious: np.ndarray, types: np.ndarray) -> dict[str, float]:
    return {kind: round(float(ious[types == kind].mean()), 3) for kind in sorted(set(types))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = Detector.load(args.model, device="cpu")
    dataset = open_dataset(args.dataset)
    package_row = int(np.argmin(np.abs(THRESHOLDS - detector.thresholds.pixel)))
    report = {"package_threshold": detector.thresholds.pixel}
    for split in args.splits:
        samples = [s for s in dataset.split(split) if s.label and s.mask_path is not None]
        if not samples:
            report[split] = {"note": "no defect images with masks"}
            continue
        ious, oracle = ious_by_threshold(detector, samples)
        types = np.array([s.defect_type for s in samples])
        miou = ious.mean(axis=1)
        best = int(np.argmax(miou))
        report[split] = {
            "images": len(samples),
            "miou_by_threshold": {f"{t:.2f}": round(float(m), 3) for t, m in zip(THRESHOLDS, miou)},
            "best_threshold": float(THRESHOLDS[best]), "best_miou": round(float(miou[best]), 3),
            "best_by_type": per_type(ious[best], types),
            "near_package_threshold": float(THRESHOLDS[package_row]),
            "miou_near_package_threshold": round(float(miou[package_row]), 3),
            "by_type_near_package_threshold": per_type(ious[package_row], types),
            "oracle_miou": round(float(oracle.mean()), 3), "oracle_by_type": per_type(oracle, types),
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
