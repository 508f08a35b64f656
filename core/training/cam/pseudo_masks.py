"""Soft defect maps -> pseudo masks: dense CRF on each defect image, all background on good images."""
from __future__ import annotations

from typing import Callable

import numpy as np

from core.training.cam.crf import IGNORE, dense_crf, pseudo_mask


def crf_pseudo_masks(images: np.ndarray, maps: np.ndarray, labels: np.ndarray, *, crf: dict | None = None,
                     high: float = 0.7, low: float = 0.3, ring: int = 2, defect_background: bool = True,
                     check_cancel: Callable[[], None] = lambda: None,
                     on_image: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """images (N, H, W, 3) uint8, maps (N, H, W) defect probabilities, labels (N,) ->
    (pseudo masks (N, H, W) uint8 in {0, 1, IGNORE}, CRF posteriors (N, H, W) float32; 0 on good images).

    A defect image whose CRF keeps no confident defect pixel still gets its map's peak region
    (>= 0.7 of the maximum) as defect: the image label says there is one. With
    ``defect_background=False`` nothing of a defect image is taught as background (all but its
    confident defect is IGNORE): large diffuse defects (mtd's "uneven", "fray") get low CAMs over most
    of their area, and the CRF's "confident background" there taught the segmenter that the defect
    texture is background; background then comes from the good images only."""
    masks = np.zeros(maps.shape, np.uint8)
    posteriors = np.zeros(maps.shape, np.float32)
    defect = np.flatnonzero(labels > 0)
    for count, index in enumerate(defect):
        check_cancel()
        q = dense_crf(images[index], maps[index], **(crf or {}))
        mask = pseudo_mask(q, high=high, low=low, ring=ring)
        if not defect_background:
            mask[mask == 0] = IGNORE
        if not (mask == 1).any():
            peak = maps[index] >= 0.7 * float(maps[index].max())
            mask[peak] = 1
            q = np.maximum(q, peak.astype(np.float32))
        masks[index] = mask
        posteriors[index] = q
        if on_image is not None:
            on_image(count)
    return masks, posteriors


def mask_stats(masks: np.ndarray, labels: np.ndarray) -> dict:
    """Share of defect / ignored pixels over the defect images' pseudo masks."""
    defect = masks[labels > 0]
    if defect.size == 0:
        return {}
    return {"defect_px": float((defect == 1).mean()), "ignore_px": float((defect == IGNORE).mean())}
