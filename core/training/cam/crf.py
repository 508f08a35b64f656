"""The pseudo mask with an ignore band that the segmenter learns from, made from a dense CRF posterior
(``dense_crf``, shared with the station's mask refinement in core.inference.mask_refinement)."""
from __future__ import annotations

import cv2
import numpy as np

IGNORE = 255  # pseudo-mask value: no loss here


def pseudo_mask(posterior: np.ndarray, *, high: float = 0.7, low: float = 0.3, ring: int = 2) -> np.ndarray:
    """CRF posterior (H, W) -> uint8 (H, W): 1 confident defect (>= high), 0 confident background
    (<= low), IGNORE in between and on a ``ring``-pixel band just outside the defect (edge doubt)."""
    mask = np.full(posterior.shape, IGNORE, np.uint8)
    defect = posterior >= high
    mask[posterior <= low] = 0
    if ring > 0 and defect.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1))
        band = cv2.dilate(defect.astype(np.uint8), kernel).astype(bool) & ~defect
        mask[band] = IGNORE
    mask[defect] = 1
    return mask
