"""Ablation of the CAM pipeline from ONE training run: the masks of every stage, measured on a test split.

Usage:
    .venv/bin/python benchmarks/cam_ablation.py MODEL_DIR DATASET [--json FILE] [--markdown FILE]

MODEL_DIR must have been trained with options.extra["keep_stages"] = True (see --train below), so that
``MODEL_DIR.stages/`` holds the classifier heads after each stage and the round-1 segmenter:
    .venv/bin/python benchmarks/cam_ablation.py runs/cam_s0 ../shared/datasets/mtd --train

Rows (each on the test images; image labels of the test split are never used to form a map):
  plain CAM       DFC head after its BCE epochs: cam_map (relative CAM x image probability)
  plain CAM long  control: the same head trained on without the CLM for as many epochs as +CLM
  +CLM            the head after the contrastive epochs
  +GCM            the head after the guided-crop rounds
  +IEM            inpainting extension of +GCM on the images the classifier calls defective
  +CRF            dense CRF of +IEM on those images (map: CRF posterior; mask: posterior >= mask_high)
  segmenter r1..rN the distilled network after each round (MODEL_DIR.stages/seg1, seg2, ...; the last round =
                  MODEL_DIR), through core.evaluation.evaluate with each package's own calibrated thresholds and the
                  package's mask refinement (runs before 2026-12-07 kept round 1 only, without the refinement)
CAM rows threshold their map at 0.5, the value the pipeline itself uses (IEM region, CRF unary midpoint).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safetensors.torch import load_file  # noqa: E402

from core.data.dataset import open_dataset  # noqa: E402
from core.evaluation import evaluate  # noqa: E402
from core.inference.detector import Detector  # noqa: E402
from core.metrics import PixelMetrics, image_metrics  # noqa: E402
from core.models.backbones import IMAGENET_NORMALISATION, backbone_channels, build_backbone  # noqa: E402
from core.models.cam_classifier import CamHead, DefectFocusClassifier  # noqa: E402
from core.training.api import StderrProgress, TrainOptions  # noqa: E402
from core.inference.mask_refinement import dense_crf  # noqa: E402
from core.training.cam.dfc import cams_from_features, image_classifier  # noqa: E402
from core.training.cam.images import extract_features, load_images  # noqa: E402
from core.training.cam.inpainting import inpaint_extend  # noqa: E402

HEADS = (("plain CAM", "cam"), ("plain CAM, trained as long as +CLM (control)", "cam_long"),
         ("+CLM", "clm"), ("+GCM", "gcm"))
KEYS = ("image_ap", "pixel_ap", "miou", "iou", "pixel_auroc", "aupro")


def measure(samples, maps: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> dict:
    """Metrics of maps (N, h, w) and masks (N, h, w) at network size, resized to each test image."""
    acc = PixelMetrics()
    for sample, amap, mask in zip(samples, maps, masks):
        image, truth = sample.load()
        if truth is None:
            continue
        height, width = image.shape[:2]
        full = cv2.resize(amap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        pred = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        acc.add(full, truth, pred, defective=bool(sample.label))
    values, _ = acc.result()
    image_values, _ = image_metrics(scores, np.asarray([s.label for s in samples]))
    return {**image_values, **values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--train", action="store_true", help="train MODEL_DIR first (keep_stages), seed --seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    dataset = open_dataset(args.dataset)
    if args.train:
        from core.training.cam_trainer import train

        train(dataset, TrainOptions(out=args.model, supervision="weak", seed=args.seed,
                                    extra={"keep_stages": True}), StderrProgress(10))
    stages = Path(str(args.model) + ".stages")
    config = json.loads((stages / "config.json").read_text())
    cfg = config["training"]
    size = (cfg["input_size"], cfg["input_size"])
    norm = IMAGENET_NORMALISATION
    samples = dataset.test
    started = time.monotonic()
    data = load_images(samples, size)
    backbone = build_backbone("efficientnet_lite0")
    feats = extract_features(backbone, data.images, norm)
    print(f"test features: {len(samples)} images in {time.monotonic() - started:.0f}s", file=sys.stderr)
    rows: dict[str, dict] = {}
    head = None
    for label, name in HEADS:
        head = CamHead(sum(backbone_channels("efficientnet_lite0")), config["network"]["head_hidden"])
        head.load_state_dict(load_file(str(stages / f"head_{name}.safetensors")))
        probs, cams = cams_from_features(head, feats, size, cfg["topk_fraction"])
        rows[label] = measure(samples, cams, cams >= 0.5, probs)
        print(label, {k: rows[label][k] for k in KEYS}, file=sys.stderr)
    # +IEM and +CRF on top of the +GCM head (the last one loaded), for images it calls defective
    flagged = np.flatnonzero(probs >= 0.5)
    classify = image_classifier(DefectFocusClassifier(backbone, head, cfg["topk_fraction"]), norm)
    started = time.monotonic()
    extended = cams.copy()
    if flagged.size:
        extended[flagged], used = inpaint_extend(data.images[flagged], cams[flagged], classify,
                                                 rounds=cfg["iem_rounds"], threshold=cfg["iem_threshold"])
    rows["+IEM"] = measure(samples, extended, extended >= 0.5, probs)
    print("+IEM", {k: rows["+IEM"][k] for k in KEYS}, f"{time.monotonic() - started:.0f}s", file=sys.stderr)
    posterior = np.zeros_like(extended)
    crf = {"iterations": cfg["crf_iterations"], "bilateral_sxy": cfg["crf_bilateral_sxy"],
           "bilateral_srgb": cfg["crf_bilateral_srgb"], "bilateral_compat": cfg["crf_bilateral_compat"]}
    for index in flagged:
        posterior[index] = dense_crf(data.images[index], extended[index], **crf)
    rows["+CRF"] = measure(samples, posterior, posterior >= cfg["mask_high"], probs)
    print("+CRF", {k: rows["+CRF"][k] for k in KEYS}, file=sys.stderr)
    rounds = cfg.get("seg_rounds", 2)   # packages before seg_rounds had 2
    # runs before 2026-12-07 kept only round 1's segmenter
    earlier = [(f"segmenter round {r}", stages / f"seg{r}") for r in range(1, rounds) if (stages / f"seg{r}").is_dir()]
    for label, package in earlier + [(f"segmenter round {rounds} (the package)", args.model)]:
        report = evaluate(Detector.load(package, device="cpu"), dataset)
        rows[label] = {k: report[k] for k in KEYS} | {"pixel_threshold": report["thresholds"]["pixel"]}
        print(label, rows[label], file=sys.stderr)
    result = {"model": str(args.model), "dataset": str(args.dataset), "stage_seconds": config["stage_seconds"],
              "total_seconds": config["total_seconds"], "rows": rows}
    table = ["| stage | image_ap | pixel_ap | miou | iou | pixel_auroc | aupro |", "|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        table.append(f"| {label} | " + " | ".join("-" if row.get(k) is None else f"{row[k]:.3f}" for k in KEYS) + " |")
    text = "\n".join(table)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
