"""Inference speed of a model package: latency at batch 1 and throughput at batch N, with warm-up.

Timed end to end as the station runs it: pre-processing (resize, normalise), the network and
post-processing (map back to image size, mask, verdict). Image decoding is excluded.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch

from core.data.synthetic import make_samples
from core.inference.detector import Detector


def _synchronise(detector: Detector) -> None:
    if detector.device.type == "cuda":
        torch.cuda.synchronize()


def bench(detector: Detector, *, batch: int = 8, image_size: tuple[int, int] = (256, 256), warmup: int = 10,
          iterations: int = 100, batch_iterations: int = 20) -> dict:
    """Latency p50/p99 (ms per image) at batch 1 and throughput (images/s) at ``batch``."""
    if batch < 1 or iterations < 1 or warmup < 0:
        raise ValueError("batch and iterations must be >= 1, warmup >= 0")
    samples = make_samples(max(batch, 8), 0.5, np.random.default_rng(0), image_size)
    images = [image for image, _, _ in samples]
    labels = np.array([label for _, _, label in samples])
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
    planted = labels[np.arange(iterations) % len(images)] == 1  # which timed images have a planted defect
    return {
        "model": str(detector.package.path),
        "family": detector.family,
        "device": str(detector.device) + (f" ({torch.cuda.get_device_name(0)})" if detector.device.type == "cuda" else ""),
        "half": detector.half,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "image_size": list(image_size),
        "input_size": list(detector.input_size),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                       "mean": float(lat.mean()), "min": float(lat.min()), "iterations": iterations, "warmup": warmup,
                       # a mask refinement costs only where the map finds something: medians by image kind
                       "p50_plain": _median(lat[~planted]), "p50_planted_defect": _median(lat[planted])},
        "mask_refinement": None if detector.mask_refinement is None else detector.mask_refinement.to_dict(),
        "throughput": {"batch": batch, "images_per_s": batch * batch_iterations / elapsed,
                       "ms_per_image": elapsed * 1000.0 / (batch * batch_iterations)},
    }


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None
