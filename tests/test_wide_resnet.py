"""WideResNet-50-2 without torchvision: loads torchvision-format state dicts (keys and shapes built by hand here)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from core.models.backbones import build_backbone
from core.models.wide_resnet import WideResNetFeatures

# torchvision's wide_resnet50_2: blocks per layer, planes; bottleneck width = 2 * planes, output = 4 * planes
_TV_LAYERS = ((3, 64), (4, 128), (6, 256), (3, 512))


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


def torchvision_wrn50_2_shapes(width_factor: int = 2) -> dict[str, tuple[int, ...]]:
    """Every key of torchvision's wide_resnet50_2 (IMAGENET1K_V1) state dict with its shape, written out by hand.
    width_factor=1 gives plain resnet50's."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    in_channels = 64
    for layer, (blocks, planes) in enumerate(_TV_LAYERS, start=1):
        width, out = planes * width_factor, planes * 4
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            shapes[f"{p}.conv1.weight"] = (width, in_channels, 1, 1)
            shapes.update(_bn(f"{p}.bn1", width))
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            shapes.update(_bn(f"{p}.bn2", width))
            shapes[f"{p}.conv3.weight"] = (out, width, 1, 1)
            shapes.update(_bn(f"{p}.bn3", out))
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (out, in_channels, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", out))
            in_channels = out
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return shapes


def _random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


def test_hand_written_key_list_has_torchvision_size():
    assert len(torchvision_wrn50_2_shapes()) == 320  # torchvision resnet50-family state dicts hold 320 entries


def test_our_trunk_has_exactly_torchvisions_keys_and_shapes_up_to_layer3():
    ours = {k: tuple(v.shape) for k, v in WideResNetFeatures().state_dict().items()}
    expected = {k: v for k, v in torchvision_wrn50_2_shapes().items() if not k.startswith(("layer4", "fc"))}
    assert ours == expected


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_loads_a_torchvision_format_file_and_returns_layer2_layer3(tmp_path, suffix):
    state = _random_state(torchvision_wrn50_2_shapes())
    path = tmp_path / f"wrn{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    net = build_backbone("wide_resnet50_2", weights_path=str(path))
    assert torch.equal(net.layer3[5].conv2.weight, state["layer3.5.conv2.weight"])
    assert torch.equal(net.bn1.running_var, state["bn1.running_var"])
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    with torch.inference_mode():
        f8, f16 = net(torch.randn(1, 3, 64, 96))
    assert f8.shape == (1, 512, 8, 12) and f16.shape == (1, 1024, 4, 6)


def test_rejects_plain_resnet50_missing_keys_and_pickled_code(tmp_path):
    resnet50 = tmp_path / "resnet50.safetensors"
    save_file(_random_state(torchvision_wrn50_2_shapes(width_factor=1)), str(resnet50))
    with pytest.raises(ValueError, match="shape"):
        WideResNetFeatures(resnet50)
    partial = {k: v for k, v in _random_state(torchvision_wrn50_2_shapes()).items() if not k.startswith("layer3")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        WideResNetFeatures(tmp_path / "partial.safetensors")
    torch.save({"conv1.weight": torch.zeros(1), "evil": _NotATensor()}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="tensors-only"):
        WideResNetFeatures(tmp_path / "code.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        WideResNetFeatures(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        WideResNetFeatures(tmp_path / "absent.pth")


class _NotATensor:
    """A custom class: torch.load(weights_only=True) must refuse to unpickle it."""


def test_pretrained_wide_resnet_without_weights_file_is_refused():
    """Its ImageNet weights cannot be downloaded here: random features must never pass for pretrained ones."""
    from core.models.backbones import BackboneError

    with pytest.raises(BackboneError, match="needs a torchvision-format weights file"):
        build_backbone("wide_resnet50_2", pretrained=True)
