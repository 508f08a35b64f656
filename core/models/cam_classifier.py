"""Defect Focus Classifier (DFC): a frozen backbone with a class-activation-map (CAM) head.

The head sees the backbone's two taps fused at stride 8, embeds them (``embedding``, used by the
contrastive module) and maps each position to one defect logit (the CAM). The image logit is the
mean of the top-k CAM logits: unlike plain average pooling, a defect that covers 0.1 % of the image
still decides the image label, and unlike max pooling the gradient reaches more than one position.
Top-k is also free of the temperature that log-sum-exp pooling needs tuning for.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fuse_taps(f8: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
    """(N, C8, h, w) and (N, C16, h/2, w/2) -> (N, C8 + C16, h, w): stride-16 upsampled to stride 8."""
    up = F.interpolate(f16.float(), size=f8.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([f8.float(), up], dim=1)


def topk_pool(cam_logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """(N, 1, h, w) -> (N,): mean of the top ``fraction`` of positions (at least one)."""
    flat = cam_logits.flatten(1)
    k = max(1, int(math.ceil(fraction * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1)


CAM_MAP_KINDS = ("relative", "sigmoid")


def cam_map(cam_logits: torch.Tensor, image_logit: torch.Tensor, gamma: float = 3.0,
            kind: str = "relative") -> torch.Tensor:
    """CAM logits (N, 1, h, w) and image logits (N,) -> defect map (N, 1, h, w) in 0..1.

    ``kind`` "sigmoid": sigmoid(CAM) times the image's defect probability (absolute: the cam package's "classifier"
    map, core.models.map_sources); "relative" (below) is the training pipeline's default.

    The stride-16 features see most of the image, so on a defect image the whole CAM sits above
    zero and sigmoid(CAM) cannot be thresholded as such. The map is therefore relative: 0 at the
    image's median position, 1 at its peak, sharpened by ``gamma`` (3: a position at 80 % of the
    peak maps to 0.5) and scaled by the image's defect probability, so good images stay low."""
    if kind == "sigmoid":
        return torch.sigmoid(cam_logits) * torch.sigmoid(image_logit).view(-1, 1, 1, 1)
    if kind != "relative":
        raise ValueError(f"CAM map kind {kind!r} is not one of {CAM_MAP_KINDS}")
    flat = cam_logits.flatten(1)
    low = flat.median(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    rel = ((cam_logits - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)
    return rel.pow(gamma) * torch.sigmoid(image_logit).view(-1, 1, 1, 1)


class CamHead(nn.Module):
    """Fused backbone taps (N, C8 + C16, h, w) -> (embedding (N, D, h, w), CAM logits (N, 1, h, w)), stride 8."""

    def __init__(self, in_channels: int, hidden: int = 64) -> None:
        super().__init__()
        # 1x1 reduce, then a depthwise-separable 3x3: ~15 M multiply-adds per 256x256 image, so the
        # head trains in seconds per epoch on 2 shared CPU cores (a full 3x3 conv cost 7x more).
        self.embed = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.Conv2d(hidden, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        )
        self.cam = nn.Conv2d(hidden, 1, 1)

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(fused.float())
        return embedding, self.cam(embedding)


class DefectFocusClassifier(nn.Module):
    """Frozen backbone + CamHead. forward(x (N, 3, H, W) normalised) ->
    (image logit (N,), CAM logits (N, 1, H/8, W/8), embedding (N, D, H/8, W/8))."""

    def __init__(self, backbone: nn.Module, head: CamHead, topk_fraction: float = 0.02,
                 map_kind: str = "relative") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.topk_fraction = topk_fraction
        self.map_kind = map_kind

    def train(self, mode: bool = True) -> "DefectFocusClassifier":
        super().train(mode)
        self.backbone.eval()  # frozen: its batch-norm statistics never move
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            fused = fuse_taps(*self.backbone(x))
        embedding, cam = self.head(fused)
        return topk_pool(cam, self.topk_fraction), cam, embedding

    @torch.no_grad()
    def cam_probabilities(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image probability (N,), CAM map (N, H, W) in 0..1 at the input size; see cam_map)."""
        logit, cam, _ = self(x)
        prob_map = cam_map(F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False), logit,
                           kind=self.map_kind)
        return torch.sigmoid(logit), prob_map[:, 0]
