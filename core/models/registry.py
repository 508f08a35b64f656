"""Model families: each registers how to build its inference network from a package's model.json.

A family's inference network is an ``nn.Module`` with the contract

    forward(x: Tensor (N, 3, H, W) float32, normalised) -> (anomaly_map: Tensor (N, 1, H, W), score: Tensor (N,))

where ``H, W`` is the package's input size, ``anomaly_map`` is in the units of ``thresholds.pixel`` and
``score`` lies in 0..1. The Detector does everything around it (pre-processing, resizing back, verdicts).
"""
from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

BuildFn = Callable[[dict], nn.Module]

# family name -> module that registers it on import (kept lazy so `import core` stays light)
_KNOWN_FAMILIES: dict[str, str] = {
    "baseline": "core.models.baseline",
    "supersimplenet": "core.models.supersimplenet",
    "cam": "core.models.cam_segmenter",
}
_BUILDERS: dict[str, BuildFn] = {}


def register_family(name: str, build: BuildFn) -> None:
    """Register ``build(meta) -> nn.Module`` for family ``name`` (called by the family's module)."""
    _BUILDERS[name] = build


def known_families() -> list[str]:
    return sorted(_KNOWN_FAMILIES)


def build_network(meta: dict) -> nn.Module:
    """Build the (untrained) inference network that a package's ``model.json`` describes."""
    family = meta.get("family")
    if family not in _KNOWN_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(known_families())}")
    if family not in _BUILDERS:
        importlib.import_module(_KNOWN_FAMILIES[family])
    return _BUILDERS[family](meta)
