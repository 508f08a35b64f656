"""How far a backbone's frozen features alone separate defects from good images: a nearest-neighbour probe.

Usage:
    .venv/bin/python benchmarks/feature_knn_probe.py [DATASET] --backbone efficientnet_lite0 [--bank 0.1]

Encodes the dataset's good training images and its test images with SuperSimpleNet's feature path (backbone taps,
aggregation at the stride-8 grid, 3x3 average pool; 256x256 input), keeps a random share of the good training
patches as a memory bank, and scores every test patch by its distance to the nearest bank patch (PatchCore without
the coreset). The image score is the largest patch distance. Prints image AUROC and AP, and pixel AUROC and AP of the
patch distances upsampled to the mask size. Nothing is trained: this says what the features hold, so that a
SuperSimpleNet figure can be read against it (a regime far below the probe is limited by its training, one near it
by the features).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.data.dataset import open_dataset
from core.metrics import average_precision, auroc
from core.models.backbone_names import DEFAULT_BACKBONE, LITE_BACKBONES
from core.models.backbones import IMAGENET_NORMALISATION, build_backbone
from core.models.supersimplenet.torch_model import FeatureAggregator
from core.training.cam.good_cells import nearest_distance
from core.training.feature_cache import FeatureCache, build_feature_cache

SIZE = (256, 256)
DEFAULT_DATASET = str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mtd")


def encode(samples, backbone, aggregator) -> FeatureCache:
    """The samples' (N, C, 32, 32) features as SuperSimpleNet's training caches them (float16, unflipped,
    not standardised), and their masks at the input size (None: none)."""
    return build_feature_cache(samples, lambda x: aggregator(backbone(x)), SIZE, IMAGENET_NORMALISATION)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default=DEFAULT_DATASET)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=LITE_BACKBONES)
    parser.add_argument("--bank", type=float, default=0.1, help="share of good training patches kept (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    dataset = open_dataset(args.dataset)
    backbone, aggregator = build_backbone(args.backbone), FeatureAggregator(1)
    started = time.perf_counter()
    train = encode([s for s in dataset.train if s.label == 0], backbone, aggregator).features.float()
    test_samples = list(dataset.test)
    test_cache = encode(test_samples, backbone, aggregator)
    test, masks = test_cache.features.float(), test_cache.masks
    channels, grid = train.shape[1], train.shape[-2:]
    patches = train.permute(0, 2, 3, 1).reshape(-1, channels)
    bank = patches[torch.randperm(patches.shape[0])[: int(args.bank * patches.shape[0])]]
    distances = nearest_distance(test.permute(0, 2, 3, 1).reshape(-1, channels), bank).view(len(test_samples), *grid)
    labels = np.array([s.label for s in test_samples])
    image_scores = distances.flatten(1).max(1).values.numpy()
    maps = F.interpolate(distances[:, None], size=SIZE, mode="bilinear", align_corners=False)[:, 0].numpy()
    pixel_scores, pixel_truth = [], []
    for score_map, mask in zip(maps, masks):
        pixel_scores.append(score_map[::4, ::4].ravel())  # every 4th pixel per axis: the probe needs a ranking
        pixel_truth.append((np.zeros(SIZE, bool) if mask is None else mask)[::4, ::4].ravel())
    pixel_scores, pixel_truth = np.concatenate(pixel_scores), np.concatenate(pixel_truth).astype(int)
    print(json.dumps({"backbone": args.backbone, "bank_patches": int(bank.shape[0]),
                      "image_auroc": round(auroc(image_scores, labels), 3),
                      "image_ap": round(average_precision(image_scores, labels), 3),
                      "pixel_auroc": round(auroc(pixel_scores, pixel_truth), 3),
                      "pixel_ap": round(average_precision(pixel_scores, pixel_truth), 3),
                      "seconds": round(time.perf_counter() - started)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
