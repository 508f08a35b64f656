"""Frozen-backbone features computed once per image and flip, kept in memory as float16.

With a frozen backbone, training only the small heads on cached features costs a fraction of running the
backbone every epoch; this is what makes training on a 2-core CPU take minutes. Any family with a frozen
encoder can use it: pass ``encode`` (normalised images (B, 3, H, W) -> features (B, C, h, w)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from core.data.dataset import Sample
from core.data.flips import check_names, flip
from core.data.images import resize_rgb_float


def preprocess(image: np.ndarray, size: tuple[int, int], normalisation: dict) -> np.ndarray:
    """Station image (H0, W0[, 3]) uint8/uint16 -> (3, H, W) float32 normalised, resized like the Detector does."""
    rgb = (resize_rgb_float(image, size) - np.asarray(normalisation["mean"], np.float32)) / np.asarray(
        normalisation["std"], np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool (H0, W0) -> bool (H, W): a pixel is defect when at least half of its area was."""
    height, width = size
    return cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) >= 0.5


@dataclass
class FeatureCache:
    """Rows are (sample, view) pairs, sample-major: row = sample_index * len(flips) + view_index.

    features: (R, C, h, w) float16.  masks: per sample, bool (H, W) at the input size, or None when the
    sample is a defect without a mask (good images get an all-False mask).
    """

    features: torch.Tensor
    flips: tuple[str, ...]
    masks: list[np.ndarray | None]

    @property
    def num_samples(self) -> int:
        return len(self.masks)

    def channel_statistics(self, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (C,) over all rows and positions (float64 sums, chunked)."""
        total = torch.zeros(self.features.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, self.features.shape[0], chunk):
            block = self.features[start:start + chunk].to(torch.float64)
            total += block.sum(dim=(0, 2, 3))
            squares += (block * block).sum(dim=(0, 2, 3))
        count = self.features.shape[0] * self.features.shape[2] * self.features.shape[3]
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt()
        return mean.float(), std.float()

    def standardise(self, mean: torch.Tensor, std: torch.Tensor, chunk: int = 256) -> None:
        """In place: features = (features - mean) / std per channel."""
        m, s = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        for start in range(0, self.features.shape[0], chunk):
            block = self.features[start:start + chunk].float()
            self.features[start:start + chunk] = ((block - m) / s).to(self.features.dtype)

    def rows(self, sample_index: int) -> list[int]:
        views = len(self.flips)
        return list(range(sample_index * views, (sample_index + 1) * views))


def build_feature_cache(samples: Sequence[Sample], encode: Callable[[torch.Tensor], torch.Tensor],
                        size: tuple[int, int], normalisation: dict, flips: Sequence[str] = ("none",),
                        device: torch.device | str = "cpu",
                        on_progress: Callable[[float], None] | None = None,
                        check_cancel: Callable[[], None] | None = None) -> FeatureCache:
    """Encode every sample under every flip (one batch per sample holding its flips)."""
    flips = tuple(flips)
    check_names(flips)
    features: torch.Tensor | None = None
    masks: list[np.ndarray | None] = []
    for index, sample in enumerate(samples):
        if check_cancel is not None:
            check_cancel()
        image, mask = sample.load()
        masks.append(None if mask is None else resize_mask(mask, size))
        x = torch.from_numpy(preprocess(image, size, normalisation))
        batch = torch.stack([flip(x, name) for name in flips]).to(device)
        with torch.inference_mode():
            encoded = encode(batch).to("cpu", torch.float16)
        if features is None:
            features = torch.empty((len(samples) * len(flips), *encoded.shape[1:]), dtype=torch.float16)
        features[index * len(flips):(index + 1) * len(flips)] = encoded
        if on_progress is not None:
            on_progress((index + 1) / len(samples))
    if features is None:
        raise ValueError("no samples to encode")
    return FeatureCache(features=features, flips=flips, masks=masks)
