"""Training the distilled segmenter's decoder on pseudo masks, from cached backbone features.

Loss per batch: binary cross-entropy over the pixels that are not IGNORE (good images: all pixels,
background) plus a soft Dice term over the defect images (defects are a tiny share of the pixels, so
BCE alone would learn to say "background" everywhere)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.models.cam_segmenter import CamSegmenter
from core.training.cam.crf import IGNORE
from core.training.cam.dfc import random_flip
from core.training.cam.images import to_tensor


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, 1, H, W), target (B, H, W) uint8 {0, 1, IGNORE}, labels (B,) -> scalar."""
    valid = (target != IGNORE).float()
    truth = (target == 1).float()
    logits = logits[:, 0]
    bce = (F.binary_cross_entropy_with_logits(logits, truth, reduction="none") * valid).sum() / valid.sum().clamp_min(1)
    defect = labels > 0
    if not defect.any():
        return bce
    p = torch.sigmoid(logits[defect]) * valid[defect]
    t = truth[defect]
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    return bce + dice.mean()


def train_decoder(model: CamSegmenter, features: torch.Tensor, images: np.ndarray, masks: np.ndarray,
                  labels: np.ndarray, normalisation: dict, *, epochs: int, lr: float = 3e-3, batch_size: int = 16,
                  good_per_epoch: int | None = None, seed: int = 0, device: torch.device | str = "cpu",
                  check_cancel: Callable[[], None] = lambda: None,
                  on_epoch: Callable[[int, float], None] | None = None) -> None:
    """Train ``model.decoder`` in place. Each epoch sees every defect image and ``good_per_epoch``
    good images drawn afresh (default: as many as defect images), with random h/v flips."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    defect = np.flatnonzero(labels > 0)
    good = np.flatnonzero(labels == 0)
    n_good = min(len(good), good_per_epoch if good_per_epoch is not None else max(len(defect), 8))
    per_epoch = len(defect) + n_good
    steps = epochs * int(np.ceil(per_epoch / batch_size))
    optimiser = torch.optim.AdamW(model.decoder.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(1, steps))
    model.decoder.train()
    model.decoder.to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
    for epoch in range(epochs):
        order = rng.permutation(np.concatenate([defect, rng.choice(good, n_good, replace=False)]).astype(np.int64))
        total = 0.0
        for start in range(0, len(order), batch_size):
            check_cancel()
            pick = order[start:start + batch_size]
            index = torch.as_tensor(pick)
            x = to_tensor(images[pick], normalisation).to(device)
            target = torch.from_numpy(masks[pick])[:, None].to(device)
            fused, x, target = random_flip(features[index].to(device).float(), x, target, rng=rng)
            cl = torch.channels_last
            logits = F.interpolate(model.decoder(fused.contiguous(memory_format=cl), x.contiguous(memory_format=cl)), size=x.shape[-2:], mode="bilinear", align_corners=False)
            loss = segmentation_loss(logits, target[:, 0], torch.as_tensor(labels[pick], device=device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += float(loss.detach()) * len(pick)
        if on_epoch is not None:
            on_epoch(epoch, total / per_epoch)
    model.decoder.eval()


@torch.no_grad()
def predict_from_features(model: CamSegmenter, features: torch.Tensor, images: np.ndarray,
                          normalisation: dict, batch_size: int = 32, device: torch.device | str = "cpu",
                          package_map: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,), maps (N, H, W) float32 in 0..1) without re-running the backbone. The maps are the decoder's
    defect probabilities (what the rounds refine), or with ``package_map`` the map the package ships
    (CamSegmenter.outputs: config "map_from")."""
    model.eval()
    scores, maps = [], []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start:start + batch_size], normalisation).to(device)
        fused = features[start:start + batch_size].to(device).float()
        if package_map:
            amap, score = model.outputs(fused, x)
        else:
            seg, logit = model.heads(fused, x)
            amap, score = torch.sigmoid(seg), torch.sigmoid(logit)
        scores.append(score.cpu().numpy())
        maps.append(amap[:, 0].cpu().numpy())
    return np.concatenate(scores), np.concatenate(maps)
