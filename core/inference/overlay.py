"""Rendering a Result over its image for reports and `inspector predict --out` (the GUI draws its own)."""
from __future__ import annotations

import cv2
import numpy as np

from core.data.images import to_grey_u8
from core.inference.result import Result, Verdict

_VERDICT_BGR = {Verdict.OK: (60, 170, 60), Verdict.NG: (40, 40, 220), Verdict.REVIEW: (0, 170, 240)}


def render_overlay(image: np.ndarray, result: Result, *, opacity: float = 0.45) -> np.ndarray:
    """(H, W, 3) BGR uint8: the image in grey, a heat map of the anomaly map inside the mask, the mask's
    contour, and a verdict bar with the score on top."""
    grey = to_grey_u8(image)
    base = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    amap = result.anomaly_map
    span = float(amap.max() - amap.min()) or 1.0
    heat = cv2.applyColorMap(((amap - amap.min()) / span * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    blended = base.copy()
    inside = result.mask
    blended[inside] = (base[inside] * (1 - opacity) + heat[inside] * opacity).astype(np.uint8)
    contours, _ = cv2.findContours(result.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(blended, contours, -1, (0, 255, 255), 1)
    bar_height = max(14, grey.shape[0] // 12)
    bar = np.zeros((bar_height, grey.shape[1], 3), np.uint8)
    bar[:] = _VERDICT_BGR[result.verdict]
    cv2.putText(bar, f"{result.verdict.value} {result.score:.3f}", (4, bar_height - 4), cv2.FONT_HERSHEY_SIMPLEX,
                bar_height / 30.0, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, blended])
