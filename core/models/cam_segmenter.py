"""The distilled CAM segmenter: the only network of the "cam" family that runs at inference.

A frozen backbone (the station default, EfficientNet-Lite0) feeds two light heads:
- ``SegDecoder``: stride-16 and stride-8 taps fused, refined at stride 4 with a tiny branch on the
  input image itself (so predicted edges follow the picture, as the CRF pseudo masks taught it);
- ``CamHead`` (from the defect-focus classifier): the image score, as the top-k mean of its CAM.

Registry contract: forward(x (N, 3, H, W) normalised) -> (anomaly_map (N, 1, H, W) defect
probability at input size, score (N,) in 0..1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.models.backbones import backbone_channels, build_backbone
from core.models.cam_classifier import CamHead, topk_pool
from core.models.registry import register_family

DEFAULT_CONFIG = {"decoder_channels": 64, "image_channels": 16, "head_hidden": 96, "topk_fraction": 0.02}


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegDecoder(nn.Module):
    """forward(f8 (N, C8, H/8, W/8), f16 (N, C16, H/16, W/16), x (N, 3, H, W)) -> logits (N, 1, H/4, W/4)."""

    def __init__(self, channels: tuple[int, int], decoder_channels: int = 64, image_channels: int = 16) -> None:
        super().__init__()
        c = decoder_channels
        self.lateral8 = nn.Conv2d(channels[0], c, 1)
        self.lateral16 = nn.Conv2d(channels[1], c, 1)
        self.fuse = nn.Sequential(_conv_bn(c, c), _conv_bn(c, c // 2))
        self.image = nn.Sequential(_conv_bn(3, image_channels, stride=2), _conv_bn(image_channels, image_channels, stride=2))
        self.refine = _conv_bn(c // 2 + image_channels, c // 2)
        self.out = nn.Conv2d(c // 2, 1, 1)

    def forward(self, f8: torch.Tensor, f16: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f8, f16 = f8.float(), f16.float()
        top = F.interpolate(self.lateral16(f16), size=f8.shape[-2:], mode="bilinear", align_corners=False)
        coarse = self.fuse(self.lateral8(f8) + top)
        fine = self.image(x)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.refine(torch.cat([coarse, fine], dim=1)))


class CamSegmenter(nn.Module):
    """Frozen backbone + SegDecoder + CamHead score. See the module docstring for the contract."""

    def __init__(self, backbone: nn.Module, channels: tuple[int, int], config: dict) -> None:
        super().__init__()
        cfg = {**DEFAULT_CONFIG, **config}
        self.backbone = backbone
        self.decoder = SegDecoder(channels, int(cfg["decoder_channels"]), int(cfg["image_channels"]))
        self.score_head = CamHead(sum(channels), int(cfg["head_hidden"]))
        self.topk_fraction = float(cfg["topk_fraction"])

    def train(self, mode: bool = True) -> "CamSegmenter":
        super().train(mode)
        self.backbone.eval()  # frozen: its batch-norm statistics never move
        return self

    def heads(self, f8: torch.Tensor, f16: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From backbone features: (segmentation logits (N, 1, H, W) at input size, image logit (N,))."""
        seg = F.interpolate(self.decoder(f8, f16, x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        _, cam = self.score_head(f8, f16)
        return seg, topk_pool(cam, self.topk_fraction)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8, f16 = self.backbone(x)
        seg, logit = self.heads(f8, f16, x)
        return torch.sigmoid(seg), torch.sigmoid(logit)


def build(meta: dict) -> CamSegmenter:
    """Untrained network for a package's model.json (weights, backbone included, come from the package)."""
    name = meta["backbone"]
    backbone = build_backbone(name, pretrained=False)
    return CamSegmenter(backbone, backbone_channels(name), dict(meta.get("config", {}).get("network", {})))


register_family("cam", build)
