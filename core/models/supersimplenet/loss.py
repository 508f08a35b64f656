"""SuperSimpleNet losses: truncated L1 and focal loss on the segmentation logits, focal loss on the score.

All take logits. ``weight`` (same shape as the logits) down-weights uncertain pixels (supervised regime:
distance-transform weights); ``None`` = all ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TRUNC_MARGIN = 0.5
FOCAL_GAMMA = 4.0


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    total = weight.sum()
    return (values * weight).sum() / total if total > 0 else values.sum() * 0.0


def truncated_l1(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                 margin: float = TRUNC_MARGIN) -> torch.Tensor:
    """Pushes normal pixels below -margin and anomalous pixels above +margin; no loss beyond.

    logits, target (0/1), weight: same shape. Normal and anomalous pixels are averaged separately and
    the two means added, so a few defect pixels are not drowned by the background.
    """
    weight = torch.ones_like(logits) if weight is None else weight
    anomalous = target > 0.5
    normal_loss = torch.clamp(logits + margin, min=0.0)
    anomalous_loss = torch.clamp(margin - logits, min=0.0)
    return (_weighted_mean(normal_loss, weight * (~anomalous)) +
            _weighted_mean(anomalous_loss, weight * anomalous))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
               gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Binary focal loss (no alpha balancing), mean over elements (weighted mean with ``weight``)."""
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = torch.sigmoid(logits)
    p_true = prob * target + (1 - prob) * (1 - target)
    loss = bce * (1 - p_true) ** gamma
    return loss.mean() if weight is None else _weighted_mean(loss, weight)


def top_cells_loss(logits: torch.Tensor, share: float, margin: float = TRUNC_MARGIN) -> torch.Tensor:
    """Multiple-instance loss for defect images without a mask: the mean of each map's top ``share`` of cells
    should lie above +margin (the truncated-L1 margin), so that somewhere on the image the map says defect.

    logits: (R, 1, h, w) map logits of R defect images; share in (0, 1]. Returns the mean hinge over the R maps."""
    flat = logits.flatten(1)
    count = max(1, int(round(share * flat.shape[1])))
    top = flat.topk(count, dim=1).values.mean(dim=1)
    return torch.clamp(margin - top, min=0.0).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Truncated L1 + focal on the map logits (B, 1, h, w)."""
    return truncated_l1(logits, target, weight) + focal_loss(logits, target, weight)
