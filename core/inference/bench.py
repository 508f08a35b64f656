"""Inference speed of a model package: latency at batch 1 and throughput at batch N, with warm-up.

Timed end to end as the station runs it: pre-processing (resize, normalise), the network and
post-processing (map back to image size, mask, verdict). Image decoding is excluded.

The images are synthetic textured surfaces (half with a planted defect) unless a dataset's split is given:
then a fixed random draw of its images, decoded before timing, so the figures are those of the line's own parts
(a mask refinement, for one, costs only on images where the map finds something).
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch

from core.data.dataset import Dataset
from core.data.synthetic import make_samples
from core.inference.detector import Detector


def _synchronise(detector: Detector) -> None:
    if detector.device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_images(count: int, image_size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` textured surfaces (H, W) uint8, about half with a planted defect, and their labels (count,)."""
    samples = make_samples(count, 0.5, np.random.default_rng(0), image_size)
    return [image for image, _, _ in samples], np.array([label for _, _, label in samples])


def dataset_images(dataset: Dataset, split: str, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A fixed random draw of at most ``count`` images of ``split`` (decoded, as the station holds them) and
    their labels (0 good, 1 defect)."""
    samples = dataset.split(split)
    if not samples:
        raise ValueError(f"the dataset has no {split!r} images to time")
    chosen = np.random.default_rng(0).permutation(len(samples))[:count]
    return [samples[i].load()[0] for i in chosen], np.array([samples[i].label for i in chosen])


def bench(detector: Detector, *, batch: int = 8, image_size: tuple[int, int] = (256, 256), warmup: int = 10,
          iterations: int = 100, batch_iterations: int = 20, images: list[np.ndarray] | None = None,
          labels: np.ndarray | None = None, source: str = "synthetic") -> dict:
    """Latency p50/p99 (ms per image) at batch 1 and throughput (images/s) at ``batch``.

    images/labels: the images to time, cycled (default: 8 or ``batch`` synthetic ones of ``image_size``);
    ``source`` names them in the report."""
    if batch < 1 or iterations < 1 or warmup < 0:
        raise ValueError("batch and iterations must be >= 1, warmup >= 0")
    if images is None:
        images, labels = synthetic_images(max(batch, 8), image_size)
    labels = np.asarray(labels)
    if len(images) == 0 or len(labels) != len(images):
        raise ValueError("bench needs at least one image and one label per image")
    for index in range(warmup):
        detector.predict([images[index % len(images)]])
    _synchronise(detector)
    latencies = []
    for index in range(iterations):
        start = time.perf_counter()
        detector.predict([images[index % len(images)]])
        _synchronise(detector)
        latencies.append((time.perf_counter() - start) * 1000.0)
    batch_images = [images[i % len(images)] for i in range(batch)]
    detector.predict(batch_images)
    _synchronise(detector)
    start = time.perf_counter()
    for _ in range(batch_iterations):
        detector.predict(batch_images)
    _synchronise(detector)
    elapsed = time.perf_counter() - start
    lat = np.asarray(latencies)
    defect = labels[np.arange(iterations) % len(images)] == 1  # which timed images show a defect
    heights, widths = [image.shape[0] for image in images], [image.shape[1] for image in images]
    return {
        "model": str(detector.package.path),
        "family": detector.family,
        "device": str(detector.device) + (f" ({torch.cuda.get_device_name(0)})" if detector.device.type == "cuda" else ""),
        "half": detector.half,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "images": {"source": source, "count": len(images), "defect": int(labels.sum()),
                   "height": [min(heights), max(heights)], "width": [min(widths), max(widths)]},
        "input_size": list(detector.input_size),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                       "mean": float(lat.mean()), "min": float(lat.min()), "iterations": iterations, "warmup": warmup,
                       # a mask refinement costs only where the map finds something: medians by image kind
                       "p50_good": _median(lat[~defect]), "p50_defect": _median(lat[defect])},
        "mask_refinement": None if detector.mask_refinement is None else detector.mask_refinement.to_dict(),
        "views": list(detector.flips),  # each view is one more image through the network
        "throughput": {"batch": batch, "images_per_s": batch * batch_iterations / elapsed,
                       "ms_per_image": elapsed * 1000.0 / (batch * batch_iterations)},
    }


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None
