"""Mirror views of an image, a map or a feature grid: the flips training caches and inference may average over."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

FLIPS = ("none", "h", "v", "hv")  # none, horizontal, vertical, both (= 180 degree rotation)
_AXES = {"none": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}


def flip(array: np.ndarray | torch.Tensor, name: str):
    """Flip the last two axes of ``array`` as ``name`` in FLIPS says. Each flip is its own inverse."""
    axes = _AXES[name]
    if not axes:
        return array
    if isinstance(array, torch.Tensor):
        return torch.flip(array, dims=axes)
    return np.ascontiguousarray(np.flip(array, axis=axes))


def check_names(flips: Sequence[str], *, what: str = "flips") -> None:
    """ValueError naming any of ``flips`` that is not in FLIPS."""
    unknown = [f for f in flips if f not in FLIPS]
    if unknown:
        raise ValueError(f"{what}: unknown flips {unknown}; choose from {FLIPS}")


def check_flips(flips: object, *, what: str = "flips") -> tuple[str, ...]:
    """``flips`` as a tuple of FLIPS names, the first "none" and none repeated; ValueError naming the problem."""
    if not isinstance(flips, (list, tuple)) or not flips:
        raise ValueError(f"{what} must be a non-empty list of {FLIPS}, got {flips!r}")
    check_names(flips, what=what)
    if flips[0] != "none" or len(set(flips)) != len(flips):
        raise ValueError(f"{what} must start with 'none' and name each flip once, got {list(flips)}")
    return tuple(flips)
