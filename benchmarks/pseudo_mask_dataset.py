"""Make a self-training copy of a dataset: the train split's defect images get a model package's own masks.

Usage:
    .venv/bin/python benchmarks/pseudo_mask_dataset.py PACKAGE SOURCE OUT

A package trained with image labels only (weak SuperSimpleNet, the cam family) draws a mask on each training defect
image; a second run with ``--supervision mixed`` on OUT then learns its map from those masks (one round of
self-training; docs/results.md, "Weak regime: one round of self-training"). Every image of OUT is a symbolic link to
SOURCE; each train defect image on which the package draws a non-empty mask (thresholded and refined exactly as the
station shows it) gets OUT/train/masks/<stem>.png, the others stay without a mask, so a mixed run trains only their
score. SOURCE's own training masks are never copied; where they exist, the pseudo masks' mIoU against them is
printed per class (file-name prefix before the first "_") as JSON, to see how good the masks were. The test split
is linked as it is, masks included.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from make_mixed_dataset import link_tree

from core.data.dataset import Sample, open_dataset
from core.inference.detector import Detector
from core.metrics import iou


def write_pseudo_masks(detector: Detector, train: list[Sample], masks_dir: Path) -> dict:
    """One PNG per train defect image with a non-empty mask from ``detector`` (255 = defect); returns how many were
    written and their mIoU against the samples' own masks where those exist (None where none does)."""
    masks_dir.mkdir(parents=True)
    ious: dict[str, list[float]] = defaultdict(list)
    written, areas = 0, []
    defects = [sample for sample in train if sample.label == 1]
    for done, sample in enumerate(defects, 1):
        image, truth = sample.load()
        mask = detector.predict([image])[0].mask  # (H, W) bool at the image's size
        if truth is not None:
            ious[sample.image_path.stem.split("_")[0]].append(iou(mask, truth))
        if mask.any():
            cv2.imwrite(str(masks_dir / f"{sample.image_path.stem}.png"), mask.astype(np.uint8) * 255)
            written += 1
            areas.append(float(mask.mean()))
        if done % 50 == 0:
            print(f"{done}/{len(defects)} defect images", file=sys.stderr)
    every = [value for values in ious.values() for value in values]
    return {"defect_images": len(defects), "masks_written": written,
            "mean_mask_area": round(float(np.mean(areas)), 4) if areas else 0.0,
            "miou_against_own_masks": round(float(np.mean(every)), 4) if every else None,
            "miou_per_class": {kind: round(float(np.mean(values)), 4) for kind, values in sorted(ious.items())}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    dataset = open_dataset(args.source)
    detector = Detector.load(args.package, device="cpu")
    for part in ("train/good", "train/defect", "test"):
        if (args.source / part).is_dir():
            link_tree(args.source / part, args.out / part)
    report = write_pseudo_masks(detector, dataset.split("train"), args.out / "train" / "masks")
    print(json.dumps({"package": str(args.package), "out": str(args.out), **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
