"""Verdicts of one package's network on a split under other packages' OK/NG thresholds (same network).

Usage:
    .venv/bin/python benchmarks/verdicts_by_thresholds.py MODEL_DIR DATASET OTHER_MODEL_DIR [...] [--split test]

MODEL_DIR's Detector scores every image of the split once. The verdicts (OK / REVIEW / NG counts of the good and of
the defect images) are then counted under MODEL_DIR's own thresholds, under each OTHER's, and under "OK from
MODEL_DIR, NG from OTHER". Meant for packages whose networks are the same bit for bit and differ only in how their
thresholds were calibrated (e.g. an unsupervised package with and without calibration copies: docs/results.md,
"Unsupervised thresholds from the shipped network's own scores"). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from core.data.dataset import load_samples, open_dataset
from core.inference.detector import Detector
from core.inference.package import read_meta
from core.inference.result import Thresholds, Verdict


def verdicts(scores: np.ndarray, labels: np.ndarray, ok: float, ng: float) -> dict:
    """{"good": [OK, REVIEW, NG], "defect": [...]} under the station's verdict policy (Thresholds.verdict) at ok, ng."""
    policy = Thresholds(ok=float(ok), ng=float(ng), pixel=0.5)  # the pixel threshold plays no part in a verdict
    decided = np.array([policy.verdict(float(score)).value for score in scores])

    def counts(mask: np.ndarray) -> list[int]:
        return [int((decided[mask] == verdict.value).sum()) for verdict in (Verdict.OK, Verdict.REVIEW, Verdict.NG)]
    return {"ok": round(ok, 4), "ng": round(ng, 4), "good": counts(labels == 0), "defect": counts(labels == 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = Detector.load(args.model, device="cpu")
    samples = open_dataset(args.dataset).split(args.split)
    labels = np.array([s.label for s in samples])
    scores = np.concatenate([detector.infer([image for image, _ in load_samples(samples[i:i + 16])])[0]
                             for i in range(0, len(samples), 16)])
    own = detector.thresholds
    report = {"model": args.model, "split": args.split, "own": verdicts(scores, labels, own.ok, own.ng)}
    for other in args.others:
        thresholds = read_meta(other)["thresholds"]
        report[other] = verdicts(scores, labels, thresholds["ok"], thresholds["ng"])
        report[f"ok own, ng {other}"] = verdicts(scores, labels, min(own.ok, thresholds["ng"]), thresholds["ng"])
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
