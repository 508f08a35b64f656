"""WideResNet-50-2 trunk (stem, layer1..layer3) written without torchvision, with torchvision's key names.

The papers' backbone. Its ImageNet weights (torchvision ``wide_resnet50_2`` ``IMAGENET1K_V1`` layout) come
from a file the user supplies: ``.safetensors`` (read with safetensors) or ``.pth``/``.pt`` (read with
``torch.load(weights_only=True)``: tensors only, no code). Keys of layer4 and fc in such a file are ignored.

forward(x: (N, 3, H, W) normalised RGB) -> [layer2: (N, 512, H/8, W/8), layer3: (N, 1024, H/16, W/16)]
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# (blocks, planes, stride) of layer1..layer3; width = planes * 2 ("wide"), output = planes * 4.
_LAYERS = ((3, 64, 1), (4, 128, 2), (6, 256, 2))
_EXPANSION = 4
_WIDTH_FACTOR = 2


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv); keys conv1..3, bn1..3, downsample.0/1."""

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        width = planes * _WIDTH_FACTOR
        out_channels = planes * _EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_layer(in_channels: int, blocks: int, planes: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_channels, planes, stride)]
    layers += [Bottleneck(planes * _EXPANSION, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class WideResNetFeatures(nn.Module):
    """Stem + layer1..layer3 of WideResNet-50-2; returns [layer2, layer3] features.

    ``weights_path``: a torchvision-format state dict file; None leaves the weights random (for tests and
    timing, or when a model package provides them).
    """

    channels = (512, 1024)

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (blocks, planes, stride) in enumerate(_LAYERS, start=1):
            setattr(self, f"layer{index}", _make_layer(in_channels, blocks, planes, stride))
            in_channels = planes * _EXPANSION
        if weights_path is not None:
            self.load_torchvision_weights(weights_path)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        return [f8, f16]

    def load_torchvision_weights(self, weights_path: str | Path) -> None:
        """Load the trunk's tensors from a torchvision-format file; raises ValueError naming what is wrong."""
        state = read_state_dict(weights_path)
        own = self.state_dict()
        # layer4 / fc belong to the classifier we do not use.
        relevant = {k: v for k, v in state.items() if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3")}
        missing = sorted(set(own) - set(relevant))
        if missing:
            raise ValueError(f"{weights_path}: not a torchvision wide_resnet50_2 state dict: "
                             f"{len(missing)} keys missing, e.g. {missing[:3]}")
        unexpected = sorted(set(relevant) - set(own))
        if unexpected:
            raise ValueError(f"{weights_path}: unexpected keys for wide_resnet50_2, e.g. {unexpected[:3]}")
        for key, tensor in relevant.items():
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise ValueError(f"{weights_path}: {key} has shape {tuple(tensor.shape)}, wide_resnet50_2 needs "
                                 f"{tuple(own[key].shape)} (is this a resnet50 rather than wide_resnet50_2?)")
        self.load_state_dict(relevant, strict=True)


def read_state_dict(weights_path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` or ``.pth``/``.pt`` file (never unpickling code)."""
    path = Path(weights_path)
    if not path.is_file():
        raise ValueError(f"backbone weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad or unsafe files
        raise ValueError(f"{path}: not a readable tensors-only torch file: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}
