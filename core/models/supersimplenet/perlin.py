"""Perlin-noise masks: where SuperSimpleNet puts its synthetic feature-space anomalies during training.

perlin_noise(shape, res, rng) -> float32 (H, W), values roughly in [-0.7, 0.7]
perlin_mask(shape, threshold, rng) -> bool (H, W), random lattice scale 2^0..2^5 per axis
perlin_masks(batch, shape, threshold, rng, empty_fraction) -> torch float (B, 1, H, W) in {0, 1}
"""
from __future__ import annotations

import numpy as np
import torch

MIN_SCALE_EXP, MAX_SCALE_EXP = 0, 5  # lattice cells per axis: 2^0 .. 2^5


def _fade(t: np.ndarray) -> np.ndarray:
    return ((6 * t - 15) * t + 10) * t * t * t


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``res`` lattice cells per axis.

    Sampled at pixel centres, so any shape works (also res == shape, where corner sampling would give zeros).
    """
    height, width = shape
    ry, rx = res
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (ry+1, rx+1, 2)
    y = (np.arange(height) + 0.5) * ry / height
    x = (np.arange(width) + 0.5) * rx / width
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]
    yi, xi = yi[:, None], xi[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[yi + dy, xi + dx]  # (H, W, 2)
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    u, v = _fade(xf), _fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v).astype(np.float32)


def perlin_mask(shape: tuple[int, int], threshold: float, rng: np.random.Generator) -> np.ndarray:
    """Binarised Perlin noise (noise > threshold), lattice scale drawn from 2^0..2^5 independently per axis."""
    ry = 2 ** int(rng.integers(MIN_SCALE_EXP, MAX_SCALE_EXP + 1))
    rx = 2 ** int(rng.integers(MIN_SCALE_EXP, MAX_SCALE_EXP + 1))
    return perlin_noise(shape, (ry, rx), rng) > threshold


def perlin_masks(batch: int, shape: tuple[int, int], threshold: float, rng: np.random.Generator,
                 empty_fraction: float = 0.5) -> torch.Tensor:
    """(B, 1, H, W) float {0, 1}: each mask is empty with probability ``empty_fraction``, else a Perlin mask."""
    out = np.zeros((batch, 1, *shape), dtype=np.float32)
    for index in range(batch):
        if rng.random() >= empty_fraction:
            out[index, 0] = perlin_mask(shape, threshold, rng)
    return torch.from_numpy(out)
