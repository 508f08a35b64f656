"""Soft defect maps -> pseudo masks: dense CRF on each defect image, all background on good images."""
from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from core.inference.mask_refinement import dense_crf
from core.training.cam.crf import IGNORE, pseudo_mask


def crf_pseudo_masks(images: np.ndarray, maps: np.ndarray, labels: np.ndarray, *, crf: dict | None = None,
                     high: float = 0.7, low: float = 0.3, ring: int = 2,
                     background_within: int | None | Sequence[int | None] = None,
                     check_cancel: Callable[[], None] = lambda: None,
                     on_image: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """images (N, H, W, 3) uint8, maps (N, H, W) defect probabilities, labels (N,) ->
    (pseudo masks (N, H, W) uint8 in {0, 1, IGNORE}, CRF posteriors (N, H, W) float32; 0 on good images).

    A defect image whose CRF keeps no confident defect pixel still gets its map's peak region
    (>= 0.7 of the maximum) as defect: the image label says there is one.

    ``background_within``: how far (pixels) from its confident defect a defect image teaches background;
    None: everywhere the CRF is confident; 0: nowhere (background then comes from the good images only);
    a sequence: one such value per image (N,).
    Why limit it: large diffuse defects (mtd's "uneven", "fray") get low CAMs over most of their area,
    and the CRF's "confident background" there teaches the segmenter that the defect texture is
    background; a band around the found defect still teaches small defects their outline."""
    masks = np.zeros(maps.shape, np.uint8)
    posteriors = np.zeros(maps.shape, np.float32)
    defect = np.flatnonzero(labels > 0)
    if isinstance(background_within, (int, type(None))):
        background_within = [background_within] * len(maps)
    if len(background_within) != len(maps):
        raise ValueError(f"background_within has {len(background_within)} values for {len(maps)} images")
    for count, index in enumerate(defect):
        check_cancel()
        q = dense_crf(images[index], maps[index], **(crf or {}))
        mask = pseudo_mask(q, high=high, low=low, ring=ring)
        if not (mask == 1).any():
            peak = maps[index] >= 0.7 * float(maps[index].max())
            mask[peak] = 1
            q = np.maximum(q, peak.astype(np.float32))
        masks[index] = limit_background(mask, background_within[index])
        posteriors[index] = q
        if on_image is not None:
            on_image(count)
    return masks, posteriors


def limit_background(mask: np.ndarray, within: int | None) -> np.ndarray:
    """Pseudo mask (H, W) uint8 -> the same with background (0) farther than ``within`` pixels from every
    defect pixel (1) set to IGNORE; None: unchanged."""
    if within is None:
        return mask
    mask = mask.copy()
    defect = mask == 1
    if not defect.any():
        mask[mask == 0] = IGNORE
        return mask
    distance = cv2.distanceTransform((~defect).astype(np.uint8), cv2.DIST_L2, 3)  # to the nearest defect pixel
    mask[(mask == 0) & (distance > within)] = IGNORE
    return mask


def mask_stats(masks: np.ndarray, labels: np.ndarray) -> dict:
    """Share of defect / ignored pixels over the defect images' pseudo masks."""
    defect = masks[labels > 0]
    if defect.size == 0:
        return {}
    return {"defect_px": float((defect == 1).mean()), "ignore_px": float((defect == IGNORE).mean())}
