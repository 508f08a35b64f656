"""A detector that costs nothing, for measuring the pipeline's own plumbing (benchmarks only)."""
from __future__ import annotations

import numpy as np

from core.inference.result import Result, Thresholds, Verdict


class NoOpDetector:
    """Says OK to everything at once: score 0, an all-zero map and mask (allocated, as a model's would be)."""

    thresholds = Thresholds(ok=0.5, ng=0.9, pixel=0.5)

    def predict(self, images: list[np.ndarray]) -> list[Result]:
        return [Result(0.0, np.zeros(im.shape[:2], np.float32), np.zeros(im.shape[:2], bool), Verdict.OK)
                for im in images]
