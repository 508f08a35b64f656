"""The baseline family: a per-pixel Gaussian model of good images' grey levels.

Not a serious defect model; it exists so that every path (train, package, evaluate, run, GUI) can be
exercised in seconds with a real network. Map = |grey - mean| / std per pixel, box-smoothed;
score = 1 - exp(-max(map) / scale), so it lies in 0..1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.models.registry import register_family


class BaselineNetwork(nn.Module):
    """forward(x (N, 3, H, W) normalised) -> (anomaly_map (N, 1, H, W), score (N,))."""

    def __init__(self, input_size: tuple[int, int], smoothing: int = 5) -> None:
        super().__init__()
        height, width = input_size
        self.smoothing = smoothing
        self.register_buffer("mean", torch.zeros(1, 1, height, width))
        self.register_buffer("std", torch.ones(1, 1, height, width))
        self.register_buffer("scale", torch.ones(1))

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1, keepdim=True)
        z = (grey - self.mean).abs() / self.std
        pad = self.smoothing // 2
        return F.avg_pool2d(F.pad(z, (pad, pad, pad, pad), mode="replicate"), self.smoothing, stride=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.anomaly_map(x)
        peak = amap.flatten(1).amax(dim=1)
        return amap, 1.0 - torch.exp(-peak / self.scale)


def build(meta: dict) -> nn.Module:
    height, width = meta["input_size"]
    return BaselineNetwork((height, width), smoothing=int(meta["config"].get("smoothing", 5)))


register_family("baseline", build)
