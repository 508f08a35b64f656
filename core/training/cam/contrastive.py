"""Contrastive Learning Module (CLM): a supervised InfoNCE loss on region embeddings.

Formulation (chosen so the loss acts on the CAM itself, not only on the features):
- every defect image i gives two embeddings, pooled from the head's feature map with the CAM's
  own soft weights w = sigmoid(CAM): inside  z_in(i)  = sum(w e) / sum(w)  and
  outside z_out(i) = sum((1 - w) e) / sum(1 - w);
- every good image j gives z_good(j) = mean of e;
- all are projected (small MLP) and L2-normalised; for each anchor z_in(i) the positives are the
  other defects' z_in, the negatives every z_out and z_good of the batch (SupCon, Khosla et al. 2020):
      L_i = -1/|P(i)| sum_p log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) ),  t = 0.1.
Because w carries gradient, the CAM is pulled onto the positions whose features look like other
defects and unlike the same image's background or good surfaces: attention sharpens on the defect
instead of on texture that co-occurs with it. The background of a defect image is a negative next to
the good images, which is exactly the confusion a weak label leaves open.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projection(nn.Module):
    """(M, D) pooled embeddings -> (M, P) unit vectors."""

    def __init__(self, dim: int, out: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(z), dim=1)


def region_embeddings(embedding: torch.Tensor, cam_logits: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """embedding (N, D, h, w), cam_logits (N, 1, h, w), labels (N,) ->
    (z_in (Nd, D), z_out (Nd, D), z_good (Ng, D)) for the Nd defect and Ng good images."""
    defect = labels > 0
    weights = torch.sigmoid(cam_logits[defect])                     # (Nd, 1, h, w)
    e_def = embedding[defect]
    z_in = (weights * e_def).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1e-6)
    z_out = ((1 - weights) * e_def).sum((2, 3)) / (1 - weights).sum((2, 3)).clamp_min(1e-6)
    z_good = embedding[~defect].mean((2, 3))
    return z_in, z_out, z_good


def clm_loss(embedding: torch.Tensor, cam_logits: torch.Tensor, labels: torch.Tensor, projection: Projection,
             temperature: float = 0.1) -> torch.Tensor:
    """The CLM loss of one batch (scalar); 0 when the batch holds fewer than two defect images."""
    z_in, z_out, z_good = region_embeddings(embedding, cam_logits, labels)
    if z_in.shape[0] < 2:
        return embedding.sum() * 0.0
    anchors = projection(z_in)                                      # (Nd, P)
    others = projection(torch.cat([z_out, z_good]))                 # (Nneg, P)
    n = anchors.shape[0]
    pos_sim = anchors @ anchors.T / temperature                     # (Nd, Nd)
    neg_sim = anchors @ others.T / temperature                      # (Nd, Nneg)
    self_mask = torch.eye(n, dtype=torch.bool, device=anchors.device)
    pos_sim = pos_sim.masked_fill(self_mask, float("-inf"))
    log_denominator = torch.logsumexp(torch.cat([pos_sim, neg_sim], dim=1), dim=1, keepdim=True)
    log_prob = (pos_sim - log_denominator).masked_fill(self_mask, 0.0)
    return -(log_prob.sum(1) / (n - 1)).mean()
