"""Synthetic textured surfaces with planted defects: for tests, the demo and the simulated camera.

Every image is (H, W) uint8 grey; every mask is bool (H, W). Defects are dark or bright blobs and
scratches, so a model has something real (but small) to find.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def textured_surface(rng: np.random.Generator, size: tuple[int, int] = (128, 128)) -> np.ndarray:
    """A brushed-metal-like texture: smooth noise plus fine grain and a gentle illumination gradient."""
    height, width = size
    coarse = cv2.resize(rng.normal(0, 1, (height // 16 + 1, width // 16 + 1)).astype(np.float32),
                        (width, height), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), sigmaX=3.0, sigmaY=0.7)
    gradient = np.linspace(-1, 1, width, dtype=np.float32)[None, :] * rng.uniform(-6, 6)
    surface = 128 + 6 * coarse + 5 * grain + gradient
    return np.clip(surface, 0, 255).astype(np.uint8)


def plant_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copy of ``image`` with one defect (blob or scratch) and the defect's mask."""
    height, width = image.shape
    mask = np.zeros((height, width), np.uint8)
    cy, cx = int(rng.integers(height // 6, height - height // 6)), int(rng.integers(width // 6, width - width // 6))
    if rng.random() < 0.5:
        axes = (int(rng.integers(max(3, width // 25), max(4, width // 8))),
                int(rng.integers(max(3, height // 25), max(4, height // 8))))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        length = rng.uniform(0.15, 0.4) * min(height, width)
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        cv2.line(mask, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1,
                 int(rng.integers(2, max(3, min(height, width) // 30))))
    contrast = rng.choice([-1.0, 1.0]) * rng.uniform(45, 80)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)
    out = np.clip(image.astype(np.float32) + contrast * soft, 0, 255).astype(np.uint8)
    return out, mask.astype(bool)


def make_samples(count: int, defect_fraction: float, rng: np.random.Generator,
                 size: tuple[int, int] = (128, 128)) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """``count`` (image, mask, label) triples; about ``defect_fraction`` of them defective (label 1)."""
    samples = []
    for index in range(count):
        image = textured_surface(rng, size)
        if index < round(count * defect_fraction):
            image, mask = plant_defect(image, rng)
            samples.append((image, mask, 1))
        else:
            samples.append((image, np.zeros(size, bool), 0))
    order = rng.permutation(len(samples))
    return [samples[i] for i in order]


def write_synthetic_dataset(root: str | Path, *, train_good: int = 40, train_defect: int = 20, test_good: int = 20,
                            test_defect: int = 20, size: tuple[int, int] = (128, 128), seed: int = 0,
                            masks: bool | float = True) -> Path:
    """Write a dataset in the station layout. ``masks``: True all, False none, or the fraction of
    train defect images that get a mask (test defect images always get one)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n_good, n_defect in (("train", train_good, train_defect), ("test", test_good, test_defect)):
        for sub in ("good", "defect", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for index in range(n_good):
            cv2.imwrite(str(root / split / "good" / f"good_{index:04d}.png"), textured_surface(rng, size))
        fraction = 1.0 if split == "test" else float(masks)
        for index in range(n_defect):
            image, mask = plant_defect(textured_surface(rng, size), rng)
            stem = f"defect_{index:04d}"
            cv2.imwrite(str(root / split / "defect" / f"{stem}.png"), image)
            if index < round(n_defect * fraction):
                cv2.imwrite(str(root / split / "masks" / f"{stem}.png"), mask.astype(np.uint8) * 255)
    return root
