"""mIoU of a model package's masks with dense-CRF mask refinements from a grid of settings, and without.

Usage:
    .venv/bin/python benchmarks/mask_refinement_grid.py MODEL_DIR DATASET [--split train] [--limit 120] [--candidates]

The grid that chose the first of core.inference.mask_refinement.CANDIDATES: Gaussian sxy {1, 3} x bilateral sxy
{5, 10, 20} x bilateral srgb {3, 6, 12} x bilateral compat {3, 6, 10} (54 settings), each as MaskRefinement
applies it at inference (at the network's input size, inside the box around the raw mask), on the split's first
``--limit`` defect images with masks, drawn by the Detector's own post-processing (so an NG image whose refined mask
comes out empty keeps its raw mask, as on the line; until 2026-12-01 this script scored the empty mask, so its
earlier figures are a little lower). Prints the
raw mIoU, the best 10 settings and the worst 3, with per-type mIoU. With ``--candidates``: the trainers'
CANDIDATES instead of the grid, each reported in their order (how the fixed refinement of packages without training
masks was chosen on mtd/train's masks, which their trainers never read). Choose settings on the train split;
reading the test split here is for diagnosis only.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from core.data.dataset import load_samples, open_dataset
from core.inference.detector import Detector
from core.inference.mask_refinement import CANDIDATES, MaskRefinement
from core.metrics import iou

GRID = [MaskRefinement(gauss_sxy=g, bilateral_sxy=b, bilateral_srgb=c, bilateral_compat=k)
        for g, b, c, k in itertools.product([1.0, 3.0], [5.0, 10.0, 20.0], [3.0, 6.0, 12.0], [3.0, 6.0, 10.0])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--limit", type=int, default=120, help="defect images with masks to use (the first N)")
    parser.add_argument("--candidates", action="store_true", help="the trainers' CANDIDATES instead of the grid")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    detector = Detector.load(args.model, device="cpu", refine_masks=False)
    samples = [s for s in open_dataset(args.dataset).split(args.split) if s.label and s.mask_path is not None]
    samples = samples[:args.limit]
    settings = list(CANDIDATES) if args.candidates else GRID
    raw, ious, types = [], np.empty((len(settings), len(samples))), []
    for start in range(0, len(samples), 8):
        loaded = load_samples(samples[start:start + 8])
        images = [image for image, _ in loaded]
        scores, maps = detector.infer(images)  # the network runs once; each setting only re-draws the masks
        detector.mask_refinement = None
        results = detector.postprocess(images, scores, maps)  # the raw masks
        for offset, ((_, mask), result) in enumerate(zip(loaded, results)):
            types.append(samples[start + offset].defect_type)
            raw.append(iou(result.mask, mask))
        for row, refinement in enumerate(settings):
            detector.mask_refinement = refinement  # the masks exactly as the station would draw them with it
            refined = detector.postprocess(images, scores, maps)
            for offset, ((_, mask), result) in enumerate(zip(loaded, refined)):
                ious[row, start + offset] = iou(result.mask, mask)
    kinds = np.array(types)

    def summary(values: np.ndarray) -> dict:
        return {"miou": round(float(values.mean()), 3),
                "by_type": {k: round(float(values[kinds == k].mean()), 3) for k in sorted(set(types))}}

    order = np.argsort(-ious.mean(axis=1))
    report = {"model": str(args.model), "split": args.split, "images": len(samples),
              "pixel_threshold": detector.thresholds.pixel,
              "raw": summary(np.asarray(raw))}
    if args.candidates:
        report["candidates"] = [{"setting": c.to_dict(), **summary(ious[i])} for i, c in enumerate(settings)]
    else:
        report["best"] = [{"setting": GRID[i].to_dict(), **summary(ious[i])} for i in order[:10]]
        report["worst"] = [{"setting": GRID[i].to_dict(), **summary(ious[i])} for i in order[-3:]]
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
