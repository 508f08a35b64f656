"""Test-time flip averaging: a package's network run on the image and its mirror views, outputs averaged.

A SuperSimpleNet package is trained on every image and its horizontal mirror (the feature cache's views), so at
inference the mirror is a second, equally valid look at the part. Averaging the two maps (each flipped back)
cancels part of each view's error: on mtd/test (3 seeds, same networks) full supervision's pixel AP rose
0.747 -> 0.774 and mIoU 0.444 -> 0.467 (docs/results.md, "Mirror views averaged at inference"). The package records
the views in model.json ``test_time_flips``; its thresholds were set on maps averaged the same way. The cam family
trains on one view and keeps it (the mirror lowered its mIoU).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from core.data.flips import check_flips, flip


class FlipAveraged(nn.Module):
    """Wraps a family network ``(N, 3, H, W) -> (maps (N, 1, H, W) in 0..1, scores (N,) in 0..1)``.

    forward runs all views as one batch of V*N images (one network call), flips
    each view's map back, and returns the mean map and the mean score over the V views, same shapes as the
    wrapped network's.
    """

    def __init__(self, network: nn.Module, flips: Sequence[str]) -> None:
        super().__init__()
        self.network = network
        self.flips = check_flips(list(flips), what="test_time_flips")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = x.shape[0]
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        views = torch.cat([flip(x, name) for name in self.flips], dim=0).contiguous(memory_format=layout)
        maps, scores = self.network(views)
        back = [flip(maps[v * count:(v + 1) * count], name) for v, name in enumerate(self.flips)]
        return torch.stack(back).mean(dim=0), scores.reshape(len(self.flips), count).mean(dim=0)


def describe(meta: dict) -> str:
    """One line for a package's model.json: the views its outputs are averaged over; '' for the image alone."""
    flips = [name for name in meta.get("test_time_flips") or () if name != "none"]
    names = {"h": "left-right", "v": "top-bottom", "hv": "rotated 180°"}
    return f"maps averaged with mirror views ({', '.join(names[f] for f in flips)})" if flips else ""
