"""Training the Defect Focus Classifier's head on cached backbone features: image-label BCE on the
top-k pooled CAM, optionally plus the CLM loss; and computing CAMs from features or from images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.models.cam_classifier import CamHead, DefectFocusClassifier, cam_map, topk_pool
from core.training.cam.contrastive import Projection, clm_loss
from core.training.cam.images import to_tensor


@dataclass
class HeadSchedule:
    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 32
    clm_weight: float = 0.0          # 0: plain CAM classifier; > 0: with the contrastive module
    temperature: float = 0.1
    topk_fraction: float = 0.02
    background_fraction: float = 0.5  # the lowest half of every image's positions is background
    background_weight: float = 1.0


def random_flip(*tensors: torch.Tensor, rng: np.random.Generator) -> list[torch.Tensor]:
    """Flip every tensor (N, C, h, w) the same random way (h and/or v). On cached feature maps this is
    an approximate augmentation (features of a flipped image are close to, not equal to, flipped features)."""
    dims = [d for d, flip in ((-1, rng.random() < 0.5), (-2, rng.random() < 0.5)) if flip]
    return [t.flip(dims) if dims else t for t in tensors]


def train_head(head: CamHead, features: torch.Tensor, labels: np.ndarray, schedule: HeadSchedule, *,
               projection: Projection | None = None, seed: int = 0, device: torch.device | str = "cpu",
               check_cancel: Callable[[], None] = lambda: None,
               on_epoch: Callable[[int, dict], None] | None = None) -> None:
    """Train ``head`` (in place) on fused features (N, C, h, w) and labels (N,)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    params = list(head.parameters())
    if schedule.clm_weight > 0:
        if projection is None:
            raise ValueError("the CLM needs a projection head")
        params += list(projection.parameters())
    optimiser = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=1e-4)
    y = torch.as_tensor(labels, dtype=torch.float32).to(device)
    n_pos = max(1.0, float(y.sum()))
    pos_weight = torch.tensor((len(y) - n_pos) / n_pos, device=device).clamp(min=1.0)  # balance OK vs NG
    steps = schedule.epochs * int(np.ceil(len(y) / schedule.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=schedule.lr, total_steps=max(1, steps))
    head.train()
    head.to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
    for epoch in range(schedule.epochs):
        order = rng.permutation(len(y))
        totals = {"bce": 0.0, "clm": 0.0}
        for start in range(0, len(order), schedule.batch_size):
            check_cancel()
            pick = torch.as_tensor(order[start:start + schedule.batch_size])
            (batch,) = random_flip(features[pick].to(device).float(), rng=rng)
            pick = pick.to(device)
            embedding, cam = head(batch.contiguous(memory_format=torch.channels_last))
            bce = F.binary_cross_entropy_with_logits(topk_pool(cam, schedule.topk_fraction), y[pick],
                                                     pos_weight=pos_weight)
            # WILDCAT-style low-k term: defects cover well under half an image, so the weakest half of
            # every CAM is background. It anchors CAM logits at "negative = not defect" on defect images
            # too, which top-k alone leaves free (their CAM drifted positive everywhere without it).
            flat = cam.flatten(1)
            low = (-flat).topk(max(1, int(schedule.background_fraction * flat.shape[1])), dim=1).values.neg()
            background = F.binary_cross_entropy_with_logits(low, torch.zeros_like(low))
            loss = bce + schedule.background_weight * background
            if schedule.clm_weight > 0:
                clm = clm_loss(embedding, cam, y[pick], projection, schedule.temperature)
                loss = loss + schedule.clm_weight * clm
                totals["clm"] += float(clm.detach()) * len(pick)
            totals["bce"] += float(bce.detach()) * len(pick)
            totals["bg"] = totals.get("bg", 0.0) + float(background.detach()) * len(pick)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, {k: v / len(y) for k, v in totals.items() if v})
    head.eval()


@torch.no_grad()
def cams_from_features(head: CamHead, features: torch.Tensor, size: tuple[int, int],
                       topk_fraction: float, batch_size: int = 64, device: torch.device | str = "cpu",
                       map_kind: str = "relative") -> tuple[np.ndarray, np.ndarray]:
    """(image probabilities (N,), CAM maps (N, H, W) float32 in 0..1 at ``size``; see cam_map)."""
    head.eval()
    probs, cams = [], []
    for start in range(0, len(features), batch_size):
        _, cam = head(features[start:start + batch_size].to(device).float())
        logit = topk_pool(cam, topk_fraction)
        probs.append(torch.sigmoid(logit).cpu())
        cams.append(cam_map(F.interpolate(cam, size=size, mode="bilinear", align_corners=False), logit,
                            kind=map_kind)[:, 0].cpu())
    return torch.cat(probs).numpy(), torch.cat(cams).numpy()


def image_classifier(classifier: DefectFocusClassifier, normalisation: dict, batch_size: int = 16,
                     device: torch.device | str = "cpu") -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A ``classify(images (M, H, W, 3) uint8) -> (probabilities (M,), CAMs (M, H, W))`` running the
    backbone on new pixels (guided crops, inpainted images)."""
    classifier.eval()

    def classify(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, cams = [], []
        for start in range(0, len(images), batch_size):
            p, c = classifier.cam_probabilities(to_tensor(images[start:start + batch_size], normalisation).to(device))
            probs.append(p.cpu().numpy())
            cams.append(c.cpu().numpy())
        if not probs:
            return np.zeros(0, np.float32), np.zeros((0, *images.shape[1:3]), np.float32)
        return np.concatenate(probs), np.concatenate(cams)

    return classify
