"""What a detector returns for one image, and the verdict policy that turns a score into OK/NG/REVIEW."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class Verdict(str, Enum):
    """The station's decision for one image."""

    OK = "OK"
    NG = "NG"
    REVIEW = "REVIEW"


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds of a model.

    ok: score < ok -> OK.  ng: score >= ng -> NG.  In between -> REVIEW (0 <= ok <= ng <= 1).
    pixel: anomaly-map value at or above which a pixel belongs to the defect mask.
    """

    ok: float
    ng: float
    pixel: float

    def __post_init__(self) -> None:
        for name in ("ok", "ng", "pixel"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"threshold {name!r} must be a finite number, got {value!r}")
        if not 0.0 <= self.ok <= self.ng <= 1.0:
            raise ValueError(f"thresholds must satisfy 0 <= ok <= ng <= 1, got ok={self.ok} ng={self.ng}")

    def verdict(self, score: float) -> Verdict:
        """Apply the policy: score >= ng -> NG; score < ok -> OK; otherwise REVIEW."""
        if score >= self.ng:
            return Verdict.NG
        if score < self.ok:
            return Verdict.OK
        return Verdict.REVIEW

    def to_dict(self) -> dict[str, float]:
        return {"ok": float(self.ok), "ng": float(self.ng), "pixel": float(self.pixel)}

    @classmethod
    def from_dict(cls, data: dict) -> "Thresholds":
        missing = {"ok", "ng", "pixel"} - set(data)
        if missing:
            raise ValueError(f"thresholds lack {sorted(missing)}")
        return cls(ok=float(data["ok"]), ng=float(data["ng"]), pixel=float(data["pixel"]))


@dataclass
class Result:
    """Prediction for one image.

    score: 0..1, higher = more defective.
    anomaly_map: float32 (H, W) at the input image's size; same units as Thresholds.pixel.
    mask: bool (H, W), anomaly_map >= Thresholds.pixel, snapped to the image's edges where the model package
        has a mask refinement (core.inference.mask_refinement).
    verdict: from Thresholds.verdict(score).
    """

    score: float
    anomaly_map: np.ndarray
    mask: np.ndarray
    verdict: Verdict
