"""Probe: would two packages' maps joined into one (an ensemble) localise defects better than either alone?

Usage:
    .venv/bin/python benchmarks/joined_maps_probe.py PACKAGE_A PACKAGE_B DATASET [--threads 1]

Both packages (SuperSimpleNet or cam: maps in 0..1) predict DATASET's test split (good images and defect images with
masks). Each raw map at the input size is first moved onto a common scale: its package's pixel threshold becomes 0.5
(a shift in logit space, as core.inference.mask_refinement.centred_probability makes for the refinement), so a joined
map thresholded at 0.5 keeps each package's calibration. Joins: "mean", "geometric" (sqrt of the product) and "max",
beside each package alone ("a", "b"). For each: pixel AP over the split (maps at each image's size) and the defect
images' mIoU at thresholds 0.35..0.75 on that scale (0.5: as calibrated), the masks made as the package's Detector
makes them (refined, and the raw mask kept where the refinement empties an NG image's), with PACKAGE_B's refinement,
score and verdicts for "b" and PACKAGE_A's for the others. Written for docs/results.md "Maps joined, a finer
activation map, a larger input"; the test split is read for diagnosis only, never to choose a setting.
Prints one JSON line per join on stderr and one JSON object on stdout.
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
from core.inference.mask_refinement import centred_probability, map_at_size, mean_iou
from core.metrics import pixel_metrics

MAP_FAMILIES = ("supersimplenet", "cam")  # the families whose maps are probabilities in 0..1
CENTRED_THRESHOLDS = (0.35, 0.45, 0.5, 0.55, 0.65, 0.75)
JOINS = {
    "a": lambda a, b: a,
    "b": lambda a, b: b,
    "mean": lambda a, b: (a + b) / 2.0,
    "geometric": lambda a, b: np.sqrt(a * b),
    "max": np.maximum,
}


def centred_outputs(detector: Detector, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector's scores (N,) and two centred copies of its maps (N, h, w) of ``images`` at the input size: for
    ranking pixels (``centred``) and for masks (centred_probability, exactly what the refinement makes of the map)."""
    outputs = [detector.infer(images[start:start + 8]) for start in range(0, len(images), 8)]
    scores, maps = (np.concatenate(part) for part in zip(*outputs))
    threshold = detector.thresholds.pixel
    return scores, centred(maps, threshold), centred_probability(maps, threshold)


def centred(maps: np.ndarray, threshold: float) -> np.ndarray:
    """Maps (N, h, w) in [0, 1] -> float64 maps with ``threshold`` moved to 0.5 (centred_probability), clipped only at
    1e-12: the refinement's 1e-4 clip would tie the saturated pixels of cam maps and lower their pixel AP (and at
    1e-12 the refinement's unaries would differ from the package's, hence the two copies)."""
    return centred_probability(maps, threshold, clip=1e-12, dtype=np.float64)


def measure(ranked: np.ndarray, masked: np.ndarray, images: list[np.ndarray], truths: list[np.ndarray],
            defect: np.ndarray, refiner: Detector, scores: np.ndarray) -> dict:
    """Pixel AP of the joined map ``ranked`` (N, h, w) over all images, and the defect images' mIoU per centred
    threshold of the same join of the maps for masks, ``masked`` (N, h, w), the masks made by ``refiner`` with
    ``scores`` (N,)."""
    full_maps = [map_at_size(m, image.shape[:2]) for m, image in zip(ranked, images)]
    metrics, _ = pixel_metrics(full_maps, truths)
    row = {"pixel_ap": round(metrics["pixel_ap"], 4)}
    calibrated = refiner.thresholds
    defect_images = [images[i] for i in defect]
    try:
        for threshold in CENTRED_THRESHOLDS:
            refiner.thresholds = replace(calibrated, pixel=threshold)
            found = refiner.postprocess(defect_images, scores[defect], masked[defect])
            row[f"miou@{threshold}"] = round(mean_iou([r.mask for r in found], [truths[i] for i in defect]), 4)
    finally:
        refiner.thresholds = calibrated
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_a")
    parser.add_argument("package_b")
    parser.add_argument("dataset")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    first, second = Detector.load(args.package_a, device="cpu"), Detector.load(args.package_b, device="cpu")
    for detector, path in ((first, args.package_a), (second, args.package_b)):
        if detector.family not in MAP_FAMILIES:
            parser.error(f"{path} is a {detector.family} package; its map is no probability in 0..1 "
                         f"(joins are for {', '.join(MAP_FAMILIES)})")
    if first.input_size != second.input_size:
        parser.error(f"the packages' input sizes differ: {first.input_size} and {second.input_size}")
    test = open_dataset(args.dataset).split("test")
    samples = [s for s in test if s.label == 0] + [s for s in test if s.label == 1 and s.mask_path is not None]
    loaded = load_samples(samples)
    images = [image for image, _ in loaded]
    truths = [mask if mask is not None else np.zeros(image.shape[:2], bool) for image, mask in loaded]
    defect = np.flatnonzero([s.label == 1 for s in samples])
    if len(defect) == 0 or len(defect) == len(samples):
        parser.error(f"{args.dataset}'s test split needs good images and defect images with masks")
    scores_a, ranked_a, masked_a = centred_outputs(first, images)
    scores_b, ranked_b, masked_b = centred_outputs(second, images)
    report = {"package_a": args.package_a, "package_b": args.package_b, "dataset": args.dataset,
              "good": len(samples) - len(defect), "defects": len(defect)}
    for name, join in JOINS.items():
        maker, scores = (second, scores_b) if name == "b" else (first, scores_a)
        report[name] = measure(join(ranked_a, ranked_b), join(masked_a, masked_b), images, truths, defect, maker,
                               scores)
        print(json.dumps({name: report[name]}), file=sys.stderr, flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
