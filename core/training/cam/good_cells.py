"""Where a defect image's features look unlike any good image's: nearest-neighbour anomaly maps from a bank of the
good training images' feature cells (a PatchCore-style memory bank, Roth et al. 2022, with a random subsample of
cells instead of a coreset), and their use to grow the CAM's region over the whole of a large defect.

Why: the CAM finds the part of a defect that tells defect from good, and for large, diffuse defects (mtd's "uneven"
and "fray", most breaks) that is a small part even after the inpainting extension. The cells of such a defect are
still unlike the good images' cells, so the anomaly map covers more of it; but it also lights marks elsewhere on the
part. Only the anomaly map's regions that touch the CAM's region are kept, so the classifier says which anomaly is
the defect and the anomaly map says how far it reaches (docs/results.md, "Anomaly regions grown from the CAM").

Used at training time only (pseudo masks); the package holds the distilled segmenter alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# which defect images' maps the cam trainer grows over anomaly regions (CamConfig.anomaly_growth)
ANOMALY_GROWTH = ("none", "unexplained", "all")


@dataclass(frozen=True)
class GoodCellBank:
    """Standardised feature cells of good images and the distances that good cells themselves reach.

    mean, std: (1, C, 1, 1) per-channel statistics of the good images' cells; cells: (B, C) float32 bank;
    typical, rare: the median and the 0.999 quantile of held-out good cells' distances to the bank (the map's 0 and 1).
    """

    mean: torch.Tensor
    std: torch.Tensor
    cells: torch.Tensor
    typical: float
    rare: float

    @classmethod
    def fit(cls, features: torch.Tensor, rng: np.random.Generator, *, bank_cells: int = 40000,
            calibration_images: int = 60) -> "GoodCellBank":
        """features (N, C, h, w) of good images (N >= 2; any float dtype) -> the bank. Every second image feeds the
        bank; up to ``calibration_images`` of the others give the distances good cells reach."""
        if len(features) < 2:
            raise ValueError("a good-cell bank needs at least 2 good images")
        pooled = _pooled(features)
        mean = pooled.mean(dim=(0, 2, 3), keepdim=True)
        std = pooled.std(dim=(0, 2, 3), keepdim=True) + 1e-3
        cells = _cells((pooled[0::2] - mean) / std)
        pick = rng.choice(len(cells), size=min(bank_cells, len(cells)), replace=False)
        bank = cells[torch.from_numpy(np.sort(pick))].contiguous()
        held_out = (pooled[1::2][:calibration_images] - mean) / std
        distances = nearest_distance(_cells(held_out), bank)
        typical, rare = float(distances.median()), float(torch.quantile(distances, 0.999))
        return cls(mean, std, bank, typical, max(rare, typical + 1e-6))

    def anomaly_maps(self, features: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """features (M, C, h, w) -> anomaly maps (M, *size) float32 in 0..1: 0 at the distance of a typical good
        cell, 1 at that of the rarest 0.1 %, bilinearly resized."""
        pooled = (_pooled(features) - self.mean) / self.std
        maps = []
        for one in pooled:
            distances = nearest_distance(_cells(one[None]), self.cells).reshape(1, 1, *one.shape[-2:])
            maps.append(((distances - self.typical) / (self.rare - self.typical)).clamp(0.0, 1.0))
        if not maps:
            return np.zeros((0, *size), np.float32)
        resized = F.interpolate(torch.cat(maps), size=size, mode="bilinear", align_corners=False)
        return resized[:, 0].numpy().astype(np.float32)


def grown_from_cam(cam_maps: np.ndarray, anomaly_maps: np.ndarray, *, level: float = 0.5, grow: int = 5,
                   min_area: float = 0.0) -> np.ndarray:
    """cam_maps, anomaly_maps (M, H, W) in 0..1 -> (M, H, W): the larger of the CAM map and the anomaly map inside
    the anomaly regions (connected parts of anomaly >= ``level`` covering at least ``min_area`` of the image) that
    touch the CAM's region (cam >= 0.5, dilated by ``grow`` px). Elsewhere the CAM map is kept as it was.

    ``min_area``: the anomaly map is coarse (cells of 8 input pixels, 3x3-pooled), so around a small defect its
    region is a blob wider than the defect; only regions at least that large say more than the CAM."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    out = cam_maps.astype(np.float32, copy=True)
    for index, (cam, anomaly) in enumerate(zip(cam_maps, anomaly_maps)):
        count, parts = cv2.connectedComponents((anomaly >= level).astype(np.uint8))
        if count <= 1:
            continue
        seed = cv2.dilate((cam >= 0.5).astype(np.uint8), kernel) > 0
        touched = [part for part in np.unique(parts[seed & (parts > 0)])
                   if np.count_nonzero(parts == part) >= min_area * parts.size]
        inside = np.isin(parts, touched) & (parts > 0)
        out[index] = np.where(inside, np.maximum(cam, anomaly), cam)
    return out


def _pooled(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, h, w) float32, 3x3 average-pooled (each cell sees its neighbours, as SuperSimpleNet's)."""
    return F.avg_pool2d(features.float(), 3, stride=1, padding=1)


def _cells(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N * h * w, C)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


@torch.no_grad()
def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """queries (Q, C), bank (B, C) -> (Q,) Euclidean distance of each query to its nearest bank row."""
    bank_sq = (bank * bank).sum(1)
    out = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        out.append(((q * q).sum(1, keepdim=True) - 2 * q @ bank.T + bank_sq).min(1).values.clamp_min(0).sqrt())
    return torch.cat(out)
