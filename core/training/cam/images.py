"""Training inputs of the CAM pipeline: station images at the network's input size, and their
frozen-backbone features, computed once and cached (the backbone never trains, so every epoch
after the first would recompute the same numbers)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from core.data.dataset import DatasetError, Sample
from core.data.images import ImageError, read_image, resize_rgb_float
from core.models.cam_classifier import fuse_taps


@dataclass
class ImageSet:
    """images: (N, H, W, 3) uint8 RGB at input size; labels: (N,) int64 0 good / 1 defect;
    sizes: (N, 2) original (H, W) of each image."""

    images: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    names: list[str]


def prepare(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A station image -> (H, W, 3) uint8 RGB at ``size`` (H, W), resized like the Detector does
    (INTER_AREA, then the same grey/16-bit -> RGB float conversion, quantised back to 8 bit)."""
    return (resize_rgb_float(image, size) * 255.0 + 0.5).astype(np.uint8)


def load_images(samples: Sequence[Sample], size: tuple[int, int],
                on_image: Callable[[int], None] | None = None) -> ImageSet:
    """Read the images of ``samples`` (never their masks: weak supervision) at ``size``."""
    images = np.empty((len(samples), size[0], size[1], 3), np.uint8)
    sizes = np.empty((len(samples), 2), np.int64)
    for index, sample in enumerate(samples):
        try:
            image = read_image(sample.image_path)
        except ImageError as exc:
            raise DatasetError(str(exc)) from exc
        sizes[index] = image.shape[:2]
        images[index] = prepare(image, size)
        if on_image is not None:
            on_image(index)
    labels = np.asarray([s.label for s in samples], np.int64)
    return ImageSet(images, labels, sizes, [s.image_path.name for s in samples])


def to_tensor(images: np.ndarray, normalisation: dict) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 normalised."""
    mean = torch.tensor(normalisation["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(normalisation["std"], dtype=torch.float32).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


@torch.inference_mode()
def extract_features(backbone: nn.Module, images: np.ndarray, normalisation: dict, *, batch_size: int = 16,
                     device: torch.device | str = "cpu", check_cancel: Callable[[], None] = lambda: None,
                     on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Fused backbone taps (fuse_taps) of every image, kept on the CPU as float16: (N, C8 + C16, H/8, W/8)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        check_cancel()
        chunks.append(fuse_taps(*backbone(to_tensor(images[start:start + batch_size], normalisation).to(device)))
                      .half().cpu())
        if on_batch is not None:
            on_batch(min(start + batch_size, len(images)))
    return torch.cat(chunks)
