"""Probe (not a station feature): would CAMs averaged over input scales and the mirror make better pseudo masks?

Trains the cam family's classifier stages (dfc, clm, gcm) on DATASET's training images exactly as the trainer does
(``_Pipeline.classifier``, seed --seed, no calibration copies), then, for each scale set, on the training defect
images: the CAM map (CAM logits of the image resized by each scale, and of its mirror, averaged at the input size;
the image probability from scale 1 alone, as the trainer's), its inpainting extension (IEM, each round classified the
same multi-scale way), and the CRF pseudo masks (``crf_pseudo_masks`` with the trainer's settings). Each is scored
against the training masks, which the trainer never reads: mean IoU over defect images of map >= 0.5 and of the
pseudo mask's defect pixels, and pixel AP over the defect images.

    .venv/bin/python benchmarks/cam_multiscale_probe.py ../shared/datasets/mtd --seed 0 --scales 1 1,1.5 1,1.5,2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.dataset import open_dataset  # noqa: E402
from core.metrics import average_precision, iou  # noqa: E402
from core.models.backbones import IMAGENET_NORMALISATION, backbone_channels, build_backbone  # noqa: E402
from core.models.cam_classifier import cam_map, fuse_taps, topk_pool  # noqa: E402
from core.training.api import TrainOptions  # noqa: E402
from core.training.cam.images import extract_features, load_images, to_tensor  # noqa: E402
from core.training.cam.inpainting import inpaint_extend  # noqa: E402
from core.training.cam.pseudo_masks import crf_pseudo_masks  # noqa: E402
from core.training.cam_trainer import CamConfig, _Pipeline, _Stages, _stage_weights  # noqa: E402


@torch.no_grad()
def multiscale_cams(backbone, head, images: np.ndarray, scales: tuple[float, ...], mirror: bool, topk: float,
                    batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """images (M, H, W, 3) uint8 -> (image logits at scale 1 (M,), CAM logits averaged over scales and mirror
    (M, 1, H, W))."""
    size = images.shape[1:3]
    logits, cams = [], []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start:start + batch_size], IMAGENET_NORMALISATION)
        total, count, logit = 0.0, 0, None
        for scale in scales:
            scaled = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            for flipped in ((False, True) if mirror else (False,)):
                _, cam = head(fuse_taps(*backbone(scaled.flip(-1) if flipped else scaled)))
                if scale == 1.0 and not flipped:
                    logit = topk_pool(cam, topk)
                cam = cam.flip(-1) if flipped else cam
                total = total + F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
                count += 1
        logits.append(logit)
        cams.append(total / count)
    return torch.cat(logits), torch.cat(cams)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scales", nargs="+", default=["1", "1,1.5", "1,1.5,2"],
                        help="scale sets, comma-separated; every set but '1' also averages the mirror")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    samples = open_dataset(args.dataset).train
    labels = np.asarray([s.label for s in samples])
    options = TrainOptions(out=Path("unused"), supervision="weak", seed=args.seed, extra={"calibration_folds": 0})
    cfg = CamConfig.from_options(options)
    size = (cfg.input_size, cfg.input_size)
    data = load_images(samples, size)
    backbone = build_backbone("efficientnet_lite0").eval()
    feats = extract_features(backbone, data.images, IMAGENET_NORMALISATION)
    pipeline = _Pipeline(backbone, backbone_channels("efficientnet_lite0"), cfg, options, torch.device("cpu"), size,
                         IMAGENET_NORMALISATION)
    head, _ = pipeline.classifier(data.images, feats, labels, np.random.default_rng(args.seed),
                                  _Stages(lambda event: None, _stage_weights(cfg.seg_rounds)))
    defect = np.flatnonzero(labels > 0)
    truth = np.stack([cv2.resize(samples[i].load()[1].astype(np.uint8), size[::-1],
                                 interpolation=cv2.INTER_NEAREST).astype(bool) for i in defect])

    def scored(name: str, maps: np.ndarray, masks: np.ndarray | None = None) -> dict:
        row = {"stage": name, "miou_map": float(np.mean([iou(m >= 0.5, t) for m, t in zip(maps, truth)])),
               "pixel_ap": float(average_precision(maps.reshape(-1), truth.reshape(-1).astype(np.int64)))}
        if masks is not None:
            row["miou_pseudo"] = float(np.mean([iou(m == 1, t) for m, t in zip(masks, truth)]))
        print(json.dumps(row), flush=True)
        return row

    rows = []
    for text in args.scales:
        scales = tuple(float(s) for s in text.split(","))
        mirror = scales != (1.0,)

        def classify(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            logit, cam = multiscale_cams(backbone, head, images, scales, mirror, cfg.topk_fraction)
            return torch.sigmoid(logit).numpy(), cam_map(cam, logit)[:, 0].numpy()

        started = time.monotonic()
        _, cams = classify(data.images[defect])
        extended, used = inpaint_extend(data.images[defect], cams, classify, rounds=cfg.iem_rounds,
                                        threshold=cfg.iem_threshold)
        within = [cfg.unexplained_background_within if u >= cfg.iem_rounds else cfg.background_within for u in used]
        masks, _ = crf_pseudo_masks(data.images[defect], extended, np.ones(len(defect)), crf=cfg.crf(),
                                    high=cfg.mask_high, low=cfg.mask_low, ring=cfg.mask_ring, background_within=within)
        seconds = round(time.monotonic() - started, 1)
        rows += [scored(f"CAM {text}", cams), scored(f"+IEM {text}", extended) | {"seconds": seconds},
                 scored(f"+CRF pseudo masks {text}", extended, masks)]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
