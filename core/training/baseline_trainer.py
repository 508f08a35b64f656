"""Fits the baseline family: mean and spread of good training images per pixel, then calibrates."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from core.data.dataset import Dataset
from core.inference.calibration import calibrate
from core.inference.detector import Detector
from core.inference.package import LoadedPackage, new_meta, save_package
from core.inference.result import Thresholds
from core.models.backbones import IMAGENET_NORMALISATION
from core.models.baseline import BaselineNetwork
from core.training.api import EtaClock, Progress, ProgressEvent, TrainingError, TrainOptions
from core.training.holdout import CrossFit, describe

INPUT_SIZE = (128, 128)


def train(dataset: Dataset, options: TrainOptions, progress: Progress) -> Path:
    good = [s for s in dataset.train if s.label == 0]
    if not good:
        raise TrainingError(f"{dataset.root}: the baseline needs good images in train/good")
    network = BaselineNetwork(INPUT_SIZE)
    meta = new_meta(family="baseline", backbone="none", config={"smoothing": network.smoothing},
                    input_size=INPUT_SIZE, normalisation=IMAGENET_NORMALISATION,
                    thresholds=Thresholds(ok=0.5, ng=0.5, pixel=1.0),
                    dataset=dataset.package_record(options.supervision))
    detector = Detector(LoadedPackage(path=Path(options.out), meta=meta, network=network), device="cpu")
    clock = EtaClock()

    # Pass 1: per-pixel mean and standard deviation of the grey level of good images (Welford-free: sums).
    total = torch.zeros(1, 1, *INPUT_SIZE, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for index, sample in enumerate(good):
        options.check_cancel()
        grey = detector.preprocess([sample.load()[0]]).mean(dim=1, keepdim=True).double()
        total += grey
        total_sq += grey * grey
        fraction = 0.5 * (index + 1) / len(good)
        progress(ProgressEvent("fit", fraction, f"image {index + 1}/{len(good)}", clock.eta(fraction)))
    mean = total / len(good)
    std = (total_sq / len(good) - mean * mean).clamp_min(0).sqrt() + 0.05
    network.mean.copy_(mean.float())
    network.std.copy_(std.float())

    # Pass 2: maps of all training images, to set the score scale and calibrate thresholds.
    samples = dataset.train
    peaks, labels, maps, masks = [], [], [], []
    for index, sample in enumerate(samples):
        options.check_cancel()
        image, mask = sample.load()
        full_map = detector.predict([image])[0].anomaly_map  # resizing keeps the peak (bilinear)
        peaks.append(float(full_map.max()))
        labels.append(sample.label)
        if mask is not None:
            maps.append(full_map)
            masks.append(mask)
        fraction = 0.5 + 0.5 * (index + 1) / len(samples)
        progress(ProgressEvent("calibrate", fraction, f"image {index + 1}/{len(samples)}", clock.eta(fraction)))
    good_peaks = np.asarray([p for p, l in zip(peaks, labels) if l == 0])
    network.scale.fill_(float(np.median(good_peaks)) / math.log(2.0))  # median good image scores 0.5
    scores = 1.0 - np.exp(-np.asarray(peaks) / float(network.scale))
    thresholds = calibrate(scores, np.asarray(labels), maps, masks)
    meta["thresholds"] = thresholds.to_dict()
    no_copies = CrossFit((), "the baseline fits per-pixel statistics, not a network, so it has no calibration copies")
    meta["calibration"] = describe(no_copies, labels, 0, scores, thresholds)
    return save_package(options.out, network, meta)
