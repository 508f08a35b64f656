"""The distilled CAM segmenter: the only network of the "cam" family that runs at inference.

A frozen backbone (the station default, EfficientNet-Lite0) feeds two light heads:
- ``SegDecoder``: stride-16 and stride-8 taps fused, refined at stride 4 with a tiny branch on the
  input image itself (so predicted edges follow the picture, as the CRF pseudo masks taught it);
- ``CamHead`` (from the defect-focus classifier): the image score, as the top-k mean of its CAM.

Registry contract: forward(x (N, 3, H, W) normalised) -> (anomaly_map (N, 1, H, W) defect
probability at input size, score (N,) in 0..1). The map is the decoder's, the classifier's CAM or both, as
config "map_from" says (core.models.map_sources; absent: "segmentation", the decoder's: packages made before
the setting read as that).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.models.backbones import backbone_channels, build_backbone
from core.models.cam_classifier import CamHead, cam_map, fuse_taps, topk_pool
from core.models.map_sources import configured_map, map_source
from core.models.registry import register_family

DEFAULT_CONFIG = {"decoder_channels": 32, "image_channels": 8, "head_hidden": 64, "topk_fraction": 0.02,
                  "map_from": "segmentation"}


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegDecoder(nn.Module):
    """forward(fused taps (N, C8 + C16, H/8, W/8), x (N, 3, H, W)) -> logits (N, 1, H/4, W/4).

    The taps arrive fused (stride 16 bilinearly upsampled and concatenated, core.models.cam_classifier.
    fuse_taps); a 1x1 conv on them equals the usual per-tap lateral convs summed (both are linear)."""

    def __init__(self, in_channels: int, decoder_channels: int = 32, image_channels: int = 8) -> None:
        super().__init__()
        c = decoder_channels
        self.lateral = nn.Conv2d(in_channels, c, 1)
        self.fuse = nn.Sequential(_conv_bn(c, c), _conv_bn(c, c // 2))
        self.image = nn.Sequential(_conv_bn(3, image_channels, stride=2), _conv_bn(image_channels, image_channels, stride=2))
        self.refine = _conv_bn(c // 2 + image_channels, c // 2)
        self.out = nn.Conv2d(c // 2, 1, 1)

    def forward(self, fused: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        coarse = self.fuse(self.lateral(fused.float()))
        fine = self.image(x)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.refine(torch.cat([coarse, fine], dim=1)))


class CamSegmenter(nn.Module):
    """Frozen backbone + SegDecoder + CamHead score. See the module docstring for the contract."""

    def __init__(self, backbone: nn.Module, channels: tuple[int, int], config: dict) -> None:
        super().__init__()
        cfg = {**DEFAULT_CONFIG, **config}
        map_source(cfg)  # refuse a bad "map_from" now, not at the first image
        self.config = cfg  # "map_from" is read at every call
        self.backbone = backbone
        self.decoder = SegDecoder(sum(channels), int(cfg["decoder_channels"]), int(cfg["image_channels"]))
        self.score_head = CamHead(sum(channels), int(cfg["head_hidden"]))
        self.topk_fraction = float(cfg["topk_fraction"])

    def train(self, mode: bool = True) -> "CamSegmenter":
        super().train(mode)
        self.backbone.eval()  # frozen: its batch-norm statistics never move
        return self

    def heads(self, fused: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From fused backbone taps (N, C, H/8, W/8): (segmentation logits (N, 1, H, W), image logit (N,))."""
        seg = F.interpolate(self.decoder(fused, x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        _, cam = self.score_head(fused)
        return seg, topk_pool(cam, self.topk_fraction)

    def outputs(self, fused: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From fused backbone taps (N, C, H/8, W/8) and the input x (N, 3, H, W): (defect map (N, 1, H, W) in 0..1
        as config["map_from"] says, score (N,) in 0..1). The classifier's map is score * sigmoid(its CAM),
        bilinearly upsampled from stride 8."""
        seg = F.interpolate(self.decoder(fused, x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        _, cam = self.score_head(fused)
        logit = topk_pool(cam, self.topk_fraction)

        def classifier() -> torch.Tensor:
            upsampled = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return cam_map(upsampled, logit, kind="sigmoid")

        return configured_map(self.config, lambda: torch.sigmoid(seg), classifier), torch.sigmoid(logit)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs(fuse_taps(*self.backbone(x)), x)


def build(meta: dict) -> CamSegmenter:
    """Untrained network for a package's model.json (weights, backbone included, come from the package)."""
    name = meta["backbone"]
    backbone = build_backbone(name, pretrained=False)
    return CamSegmenter(backbone, backbone_channels(name), dict(meta.get("config", {}).get("network", {})))


register_family("cam", build)
