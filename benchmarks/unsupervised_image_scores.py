"""Image scores of one SuperSimpleNet package, from its classification head and read off its map, on one split.

Usage:
    .venv/bin/python benchmarks/unsupervised_image_scores.py MODEL_DIR DATASET [--split test] [--threads 1]

For every image of the split the package's Detector makes its map (mirror views averaged as the package says); the
image is then scored by the classification head (the papers' score) and by the map: its maximum and the mean of its
highest 0.1 %, 1 % and 5 % of pixels (core.models.supersimplenet.torch_model.top_share_mean), and the geometric mean
of the head's score with the 1 % one. Prints image AUROC and AP per score as one JSON object. (The map's scores are
read off the views' averaged map; a package with "score_from" "map" scores each view's map and averages the scores.)
How unsupervised packages' "score_from" "map" with "score_top_share" 0.01 was chosen: on held-out halves of
mtd/train (benchmarks/make_heldout_halves.py; the half's test split holds the images the package never saw), see
docs/results.md, "Unsupervised image score from the map".
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from core.data.dataset import load_samples, open_dataset
from core.inference.detector import Detector
from core.inference.package import load_package
from core.metrics import auroc, average_precision
from core.models.supersimplenet.torch_model import top_share_mean

SHARES = (0.001, 0.01, 0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    package = load_package(args.model)
    if package.meta["family"] != "supersimplenet":
        parser.error(f"{args.model} is a {package.meta['family']} package; this compares SuperSimpleNet's image scores")
    # read by the network at every call: the head's score, and the map. Set before the Detector copies the network
    package.network.config["score_from"] = "classifier"
    detector = Detector(package, device="cpu")
    samples = open_dataset(args.dataset).split(args.split)
    labels = np.array([s.label for s in samples])
    if labels.min() == labels.max():
        parser.error(f"{args.dataset}'s {args.split} split needs good and defect images")
    scores: dict[str, list[float]] = {"classifier": [], "map_max": [], "geo_classifier_top1pct": []}
    scores.update({f"map_top{share * 100:g}pct": [] for share in SHARES})
    for start in range(0, len(samples), 16):
        batch = load_samples(samples[start:start + 16])
        head, maps = detector.infer([image for image, _ in batch])
        maps_t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
        scores["classifier"].extend(head.tolist())
        scores["map_max"].extend(maps_t.flatten(1).max(dim=1).values.tolist())
        tops = {share: top_share_mean(maps_t, share).numpy() for share in SHARES}
        for share, values in tops.items():
            scores[f"map_top{share * 100:g}pct"].extend(values.tolist())
        scores["geo_classifier_top1pct"].extend(np.sqrt(head * tops[0.01]).tolist())
    report = {"model": args.model, "dataset": args.dataset, "split": args.split, "good": int((labels == 0).sum()),
              "defect": int((labels == 1).sum())}
    for name, values in scores.items():
        v = np.asarray(values)
        report[name] = {"auroc": round(float(auroc(v, labels)), 4), "ap": round(float(average_precision(v, labels)), 4)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
