"""Dense CRF (Krähenbühl & Koltun 2011, via pydensecrf) that snaps a soft defect map to image edges,
and the pseudo mask with an ignore band that the segmenter learns from."""
from __future__ import annotations

import cv2
import numpy as np

IGNORE = 255  # pseudo-mask value: no loss here


def dense_crf(image: np.ndarray, prob: np.ndarray, *, iterations: int = 5, gauss_sxy: float = 3.0,
              gauss_compat: float = 3.0, bilateral_sxy: float = 20.0, bilateral_srgb: float = 10.0,
              bilateral_compat: float = 6.0, clip: float = 1e-4) -> np.ndarray:
    """image (H, W, 3) uint8 RGB, prob (H, W) defect probability -> CRF posterior of defect (H, W) float32.

    Unary: -log of (1 - prob, prob). Pairwise: a Gaussian smoothness kernel and a bilateral
    (position + colour) kernel, so labels spread along similar pixels and stop at edges."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width = prob.shape
    p = np.clip(prob.astype(np.float32), clip, 1.0 - clip)
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1.0 - p, p]))))
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image),
                             compat=bilateral_compat)
    q = np.asarray(crf.inference(iterations), dtype=np.float32).reshape(2, height, width)
    return q[1]


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
