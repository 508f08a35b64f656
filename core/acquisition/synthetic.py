"""A synthetic camera: textured surfaces (core/data/synthetic.py), some with planted defects, at a set rate.

For the demo and for tests without a camera. A pool of images is generated once (texture synthesis
costs a few ms per image) and replayed in a shuffled cycle; which frames are defective is known
(``defective(sequence)``), so a demo can show that the model finds them.
"""
from __future__ import annotations

import numpy as np

from core.acquisition.base import Frame, PacedSource, SourceError, SourceState, host_now
from core.data.synthetic import plant_defect, textured_surface


class SyntheticSource(PacedSource):
    """size: (H, W); rate_hz: frames/s (None/0 = as fast as asked); defect_fraction: share of pool images
    with a planted defect; count: stop (FINISHED) after this many frames, None = endless."""

    def __init__(self, *, size: tuple[int, int] = (256, 256), rate_hz: float | None = 10.0,
                 defect_fraction: float = 0.2, pool: int = 32, seed: int = 0, count: int | None = None) -> None:
        if not 0.0 <= defect_fraction <= 1.0:
            raise SourceError(f"synthetic source: defect_fraction must be in 0..1, got {defect_fraction}")
        if pool < 1 or min(size) < 16:
            raise SourceError(f"synthetic source: need pool >= 1 and size >= 16x16, got pool={pool} size={size}")
        super().__init__("synthetic", rate_hz)
        rng = np.random.default_rng(seed)
        n_defect = round(pool * defect_fraction)
        self._images: list[np.ndarray] = []
        self._defect: list[bool] = []
        for index in range(pool):
            image = textured_surface(rng, size)
            if index < n_defect:
                image, _ = plant_defect(image, rng)
            self._images.append(image)
            self._defect.append(index < n_defect)
        self._order = rng.permutation(pool)
        self.count = count

    def defective(self, sequence: int) -> bool:
        """Whether the frame with this sequence number carries a planted defect."""
        return self._defect[int(self._order[(sequence - 1) % len(self._order)])]

    def fetch(self, timeout_s: float) -> Frame | None:
        if not self._streaming_or_wait(timeout_s):
            return None
        if self.count is not None and self._sequence >= self.count:
            self._set_state(SourceState.FINISHED, f"{self.count} frames delivered")
            return None
        if not self._frame_due(timeout_s):
            return None
        sequence = self._next_sequence()
        image = self._images[int(self._order[(sequence - 1) % len(self._order)])].copy()
        host_time, host_ns = host_now()
        self._count("frames")
        return Frame(image=image, camera_id=self.camera_id, sequence=sequence, camera_timestamp_ns=None,
                     host_timestamp=host_time, host_monotonic_ns=host_ns, pixel_format="Mono8",
                     camera_frame_id=sequence)
