"""Probe: how far do the frozen backbone's features separate mtd's defects without any training?

Scores every test image by nearest-neighbour distance of its feature cells to a bank of the good training
images' cells (a PatchCore-style memory bank, random subsample instead of a coreset), on exactly the features
SuperSimpleNet's unsupervised regime trains on (same backbone taps, aggregation, 256x256 input). The image
score is the largest cell distance, the map the cell distances upsampled to the image. This is a diagnostic,
not a model of the station: it says whether the features or the training limits unsupervised SuperSimpleNet.

Usage:
    .venv/bin/python benchmarks/unsup_knn_probe.py ../shared/datasets/mtd [--bank 40000] [--backbone efficientnet_lite0]
Prints one JSON object: image_auroc, image_ap, pixel_auroc, pixel_ap (maps and masks at the original size).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from core.data.dataset import open_dataset
from core.metrics import PixelMetrics, image_metrics
from core.models.backbones import DEFAULT_BACKBONE, IMAGENET_NORMALISATION
from core.models.supersimplenet import SuperSimpleNet, make_config
from core.training.cam.good_cells import nearest_distance
from core.training.feature_cache import preprocess

SIZE = (256, 256)


@torch.inference_mode()
def encode(network: SuperSimpleNet, images: list[np.ndarray], batch: int = 16) -> torch.Tensor:
    """Station images -> aggregated features (N, C, 32, 32) float32 (raw: the network has no statistics set)."""
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.stack([preprocess(im, SIZE, IMAGENET_NORMALISATION) for im in images[start:start + batch]]))
        out.append(network.encode(x))
    return torch.cat(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--bank", type=int, default=40000, help="good training cells kept in the bank")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    dataset = open_dataset(args.dataset)
    network = SuperSimpleNet(make_config(args.backbone), pretrained=True).eval()
    good = encode(network, [s.load()[0] for s in dataset.train if s.label == 0])
    cells = good.permute(0, 2, 3, 1).reshape(-1, good.shape[1])
    pick = torch.from_numpy(np.random.default_rng(args.seed).choice(cells.shape[0], min(args.bank, cells.shape[0]),
                                                                     replace=False))
    bank = cells[pick].contiguous()
    scores, labels, pixels = [], [], PixelMetrics()
    for sample in dataset.test:
        image, mask = sample.load()
        features = encode(network, [image])
        grid = nearest_distance(features[0].permute(1, 2, 0).reshape(-1, features.shape[1]), bank)
        grid = grid.reshape(1, 1, *features.shape[-2:])
        scores.append(float(grid.max()))
        amap = F.interpolate(grid, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
        pixels.add(amap, mask if mask is not None else np.zeros(image.shape[:2], bool))
        labels.append(sample.label)
    figures, _ = image_metrics(np.asarray(scores), np.asarray(labels))
    pixel, _ = pixels.result()
    print(json.dumps({**figures, **{k: v for k, v in pixel.items() if k in ("pixel_auroc", "pixel_ap")},
                      "bank": int(bank.shape[0]), "backbone": args.backbone,
                      "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
