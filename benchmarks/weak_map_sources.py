"""Each map source (segmentation / classifier / both) of one weak package, measured on images it never fitted.

Usage:
    .venv/bin/python benchmarks/weak_map_sources.py MODEL_DIR HELD_OUT_DATASET [--threads 1]

MODEL_DIR: a SuperSimpleNet or cam package trained on HELD_OUT_DATASET's train split (e.g. a half made by
benchmarks/make_heldout_halves.py); its test split is the held-out half. For each source in
core.models.map_sources.MAP_SOURCES the same network's map is made that way and:
the trainer's threshold rule without masks (the 0.999 quantile of good images' maps at the input size), applied to
the held-out good images; the held-out defect images' mIoU with the masks the Detector makes (refined as the package
says) at 0.7-1.25x that threshold; the share of held-out good images given a mask; pixel AP and AUROC over the
held-out split. How weak packages' "both" was chosen (docs/results.md, "Weak regime: both heads' maps", and for the
cam family "Map from both heads"; that family's trainer sets its threshold on pseudo masks instead, so compare its
sources at the same scale).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import numpy as np
import torch

from core.data.dataset import load_samples, open_dataset
from core.inference.detector import Detector
from core.inference.package import load_package
from core.inference.mask_refinement import map_at_size
from core.metrics import iou, pixel_metrics
from core.models.map_sources import MAP_SOURCES

SCALES = (0.7, 0.8, 0.85, 0.9, 1.0, 1.1, 1.25)
GOOD_QUANTILE = 0.999  # core.inference.calibration.pixel_threshold without masks


def measure(detector: Detector, good: list, defects: list) -> dict:
    """The figures above for the detector's network as its config said when the Detector was made."""
    loaded = {"good": [], "defect": []}
    outputs = {"good": ([], []), "defect": ([], [])}
    for kind, samples in (("good", good), ("defect", defects)):
        for start in range(0, len(samples), 8):
            batch = load_samples(samples[start:start + 8])
            scores, maps = detector.infer([image for image, _ in batch])
            loaded[kind].extend(batch)
            outputs[kind][0].append(scores)
            outputs[kind][1].append(maps)
    scores = {kind: np.concatenate(outputs[kind][0]) for kind in outputs}
    maps = {kind: np.concatenate(outputs[kind][1]) for kind in outputs}
    threshold = float(np.quantile(maps["good"].ravel(), GOOD_QUANTILE))
    images = {kind: [image for image, _ in loaded[kind]] for kind in loaded}
    base = detector.thresholds
    figures: dict = {"threshold": round(threshold, 4), "miou": {}, "good_with_mask": {}}
    for scale in SCALES:
        detector.thresholds = replace(base, pixel=threshold * scale)
        found = detector.postprocess(images["defect"], scores["defect"], maps["defect"])
        figures["miou"][scale] = round(float(np.mean([iou(r.mask, truth) for r, (_, truth)
                                                      in zip(found, loaded["defect"])])), 4)
        clean = detector.postprocess(images["good"], scores["good"], maps["good"])
        figures["good_with_mask"][scale] = round(float(np.mean([r.mask.any() for r in clean])), 3)
    detector.thresholds = base
    # the maps at each image's size as the Detector makes them (they do not depend on the threshold)
    full_maps = [map_at_size(small, image.shape[:2]) for kind in ("good", "defect")
                 for image, small in zip(images[kind], maps[kind])]
    truths = [np.zeros(image.shape[:2], bool) for image in images["good"]] + [t for _, t in loaded["defect"]]
    metrics, _ = pixel_metrics(full_maps, truths)
    figures.update({k: round(metrics[k], 4) for k in ("pixel_ap", "pixel_auroc") if metrics.get(k) is not None})
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    package = load_package(args.model)
    family = package.meta["family"]
    if family not in ("supersimplenet", "cam"):
        parser.error(f"{args.model} is a {family} package; map sources are SuperSimpleNet's and cam's")
    held_out = open_dataset(args.dataset).split("test")
    good = [s for s in held_out if s.label == 0]
    defects = [s for s in held_out if s.label == 1 and s.mask_path is not None]
    if not good or not defects:
        parser.error(f"{args.dataset}'s test split needs good images and defect images with masks")
    report = {"model": args.model, "dataset": args.dataset, "good": len(good), "defects": len(defects)}
    for source in MAP_SOURCES:
        # read by the network's outputs(); a Detector runs its own copy of the network, so one per source
        package.network.config["map_from"] = source
        report[source] = measure(Detector(package, device="cpu"), good, defects)
        print(json.dumps({source: report[source]}), file=sys.stderr, flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
