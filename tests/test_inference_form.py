"""core.models.inference_form: BatchNorm folded and pads moved into convolutions, same outputs, original untouched,
and a rewrite that would change the outputs refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from core.models.backbones import build_backbone
from core.models.inference_form import inference_form
from core.models.supersimplenet.torch_model import SuperSimpleNet, make_config


def _randomise_batchnorms(network: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding them is really tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)
    return network.eval()


def _count(network: nn.Module, kind: type) -> int:
    return sum(isinstance(module, kind) for module in network.modules())


def _example(size: int = 64) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_supersimplenet_folds_every_batchnorm_with_the_same_outputs_and_leaves_the_original_as_it_was():
    network = _randomise_batchnorms(SuperSimpleNet(make_config("efficientnet_lite0", map_from="both")))
    before = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    batchnorms = _count(network, nn.BatchNorm2d)
    rewritten = inference_form(network, _example())
    assert rewritten is not network
    assert batchnorms > 30 and _count(rewritten, nn.BatchNorm2d) == 0
    assert _count(network, nn.BatchNorm2d) == batchnorms
    assert all(torch.equal(before[name], tensor) for name, tensor in network.state_dict().items())
    other = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(2))   # not the example it checked on
    with torch.inference_mode():
        (map_a, score_a), (map_b, score_b) = network(other), rewritten(other)
    assert torch.allclose(map_a, map_b, atol=1e-5) and torch.allclose(score_a, score_b, atol=1e-5)


def test_symmetric_same_pads_move_into_the_convolutions_and_the_uneven_ones_stay():
    backbone = _randomise_batchnorms(build_backbone("efficientnet_lite0", pretrained=False))
    pads = _count(backbone, nn.ZeroPad2d)
    rewritten = inference_form(backbone, _example())
    left = _count(rewritten, nn.ZeroPad2d)
    # the stem and the first depthwise convolution of each stride-2 stage pad unevenly (TensorFlow's "same")
    assert pads == 12 and left == 4
    with torch.inference_mode():
        for a, b in zip(backbone(_example(80)), rewritten(_example(80))):
            assert torch.allclose(a, b, atol=1e-4 * max(1.0, float(a.abs().max())))


class _ConvOutputUsedTwice(nn.Module):
    """conv -> bn, but the conv's output is also added after the norm: folding would change the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_rewrite_that_changes_the_outputs_is_refused():
    network = _randomise_batchnorms(_ConvOutputUsedTwice())
    assert inference_form(network, _example(16)) is network


def test_network_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        inference_form(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train(), _example(8))


def test_nothing_to_rewrite_gives_the_network_itself():
    network = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    assert inference_form(network, _example(8)) is network


class _NoTensorOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> float:
        return float(self.layers(x).mean())


def test_outputs_that_cannot_be_compared_leave_the_network_as_it_is():
    network = _randomise_batchnorms(_NoTensorOutput())
    assert inference_form(network, _example(8)) is network


def test_dict_outputs_are_compared():
    class DictOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"map": self.layers(x)}

    network = _randomise_batchnorms(DictOutput())
    rewritten = inference_form(network, _example(8))
    assert rewritten is not network and _count(rewritten, nn.BatchNorm2d) == 0
