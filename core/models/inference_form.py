"""A trained network rewritten for inference, with the same outputs to float rounding and fewer passes over memory.

- BatchNorm folded into the convolution that feeds it (eval mode: the norm is a fixed per-channel scale and shift, so
  it can live in the convolution's weights and bias);
- a symmetric zero pad before a convolution (EfficientNet-Lite's TensorFlow-style "same" convolutions pad in a
  separate step) done by the convolution itself.

In a torch profile of a weak SuperSimpleNet package's network on 2 CPU cores (256x256, mirror views) BatchNorm and
the pads' zero fill took about a fifth of the time, the convolutions about half; the Detector's p50 fell about 10 ms
(docs/results.md, "Memory allocator and the inference form").

Which convolution feeds which BatchNorm is read off one forward pass of an example input (forward hooks), so any
family's network is handled without a list of its layers. The rewritten copy is then checked against the original
on that input; if the outputs differ beyond float rounding (a convolution's output used elsewhere as well, say) the
original is used unchanged.
"""
from __future__ import annotations

import copy
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)

# outputs may differ by float rounding only: this much of their largest magnitude (at least 1)
RELATIVE_TOLERANCE = 1e-3


def inference_form(network: nn.Module, example: torch.Tensor) -> nn.Module:
    """``network`` (eval mode) rewritten as the module docstring says, as a new module; ``network`` itself is
    returned where nothing can be rewritten or the rewrite changes the outputs on ``example`` (a batch the network
    takes, e.g. (1, 3, H, W)). The original is never modified."""
    if network.training:
        raise ValueError("inference_form needs a network in eval mode (BatchNorm statistics fixed)")
    with torch.inference_mode():
        reference, pairs = _forward_with_pairs(network, example)
    rewritten = copy.deepcopy(network)
    folded = _fold(rewritten, pairs)
    unpadded = _pads_into_convolutions(rewritten)
    if not folded and not unpadded:
        return network
    with torch.inference_mode():
        outputs = rewritten(example)
    if not _tensors(reference):  # nothing to compare the copy with: it cannot be trusted
        log.warning("inference form of %s left unused: its outputs hold no tensors to check", type(network).__name__)
        return network
    difference = _largest_relative_difference(_tensors(reference), _tensors(outputs))
    if difference > RELATIVE_TOLERANCE:
        log.warning("inference form of %s left unused: outputs differ by %.3g of their size",
                    type(network).__name__, difference)
        return network
    return rewritten


def _forward_with_pairs(network: nn.Module, example: torch.Tensor) -> tuple[object, list[tuple[str, str]]]:
    """One forward pass of ``example``: (its outputs, [(convolution name, BatchNorm name)]) for every BatchNorm2d
    that only ever received the output of one and the same Conv2d, called as often as that BatchNorm."""
    names = {module: name for name, module in network.named_modules()}
    made_by: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # conv outputs kept referenced, so their ids stay unique during the pass
    fed_by: dict[str, set[str]] = defaultdict(set)
    calls: Counter[str] = Counter()

    def after_convolution(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        made_by[id(output)] = names[module]
        alive.append(output)
        calls[names[module]] += 1

    def before_batchnorm(module: nn.Module, inputs: tuple) -> None:
        fed_by[names[module]].add(made_by.get(id(inputs[0]), ""))
        calls[names[module]] += 1

    hooks = []
    for module, name in names.items():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(after_convolution))
        elif isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(before_batchnorm))
    try:
        outputs = network(example)
    finally:
        for hook in hooks:
            hook.remove()
    pairs = []
    for batchnorm, sources in fed_by.items():
        (convolution,) = sources if len(sources) == 1 else ("",)
        if convolution and calls[convolution] == calls[batchnorm]:
            pairs.append((convolution, batchnorm))
    counts = Counter(convolution for convolution, _ in pairs)
    return outputs, [(c, b) for c, b in pairs if counts[c] == 1]


def _fold(network: nn.Module, pairs: Iterable[tuple[str, str]]) -> int:
    """Each BatchNorm of ``pairs`` folded into its convolution, in place; returns how many."""
    count = 0
    for convolution, batchnorm in pairs:
        fused = fuse_conv_bn_eval(network.get_submodule(convolution), network.get_submodule(batchnorm))
        network.set_submodule(convolution, fused)
        network.set_submodule(batchnorm, nn.Identity())
        count += 1
    return count


def _pads_into_convolutions(network: nn.Module) -> int:
    """Convolutions with a symmetric ``static_padding`` zero pad (EfficientNet-Lite's Conv2dStaticSamePadding)
    replaced, in place, by a plain Conv2d padding by itself; returns how many."""
    count = 0
    for name, module in list(network.named_modules()):
        pad = getattr(module, "static_padding", None)
        if not isinstance(module, nn.Conv2d) or not isinstance(pad, nn.ZeroPad2d):
            continue
        left, right, top, bottom = pad.padding
        if left != right or top != bottom or module.padding != (0, 0) or module.padding_mode != "zeros":
            continue  # TensorFlow's uneven "same" pad (stride 2) has no symmetric equivalent
        plain = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                          padding=(top, left), dilation=module.dilation, groups=module.groups,
                          bias=module.bias is not None)
        plain.load_state_dict(module.state_dict())
        network.set_submodule(name, plain.to(module.weight.device, module.weight.dtype))
        count += 1
    return count


def _tensors(outputs: object) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [tensor for item in outputs for tensor in _tensors(item)]
    return []


def _largest_relative_difference(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    if len(reference) != len(outputs) or any(a.shape != b.shape for a, b in zip(reference, outputs)):
        return float("inf")
    worst = 0.0
    for a, b in zip(reference, outputs):
        a, b = a.float(), b.float()
        scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
        worst = max(worst, float((a - b).abs().max()) / scale if a.numel() else 0.0)
    return worst
