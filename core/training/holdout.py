"""Holding back part of the training images to calibrate a model's thresholds on.

A network's scores on the images it was trained on separate good from defect far better than its scores
on new parts do: on mtd every trained package scored its training images perfectly apart, so the OK and
NG thresholds met in the middle of a gap that new images do not respect, and 8-14 of 115 test defects
passed as OK. Thresholds set on images the network never trained on see what a new part sees.

So the trainers fit a calibration copy of the network without the held-back images, set the thresholds on
its scores for them, and then fit the shipped network on all training images (as scikit-learn's
CalibratedClassifierCV does with ensemble=False): fitting without them cost image AP on mtd (weak
SuperSimpleNet 0.979 -> 0.967, CAM segmenter 0.975 -> 0.951, 3 seeds each).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from core.training.api import TrainingError

DEFAULT_FRACTION = 0.15   # of each class; on mtd/train: 100 good and 41 defect images
MIN_HELD = 5              # fewer held-back images of a class than this give no usable quantile
MIN_FIT = 2               # images of a class the training keeps at least


@dataclass(frozen=True)
class Holdout:
    """Indices into the training samples: ``fit`` trains the calibration copy, ``held`` sets its thresholds."""

    fit: np.ndarray    # (N_fit,) int64, ascending
    held: np.ndarray   # (N_held,) int64, ascending; empty when nothing could be held back
    reason: str        # why nothing was held back ("" when something was)

    @property
    def used(self) -> bool:
        return self.held.size > 0


def calibration_holdout(labels: Sequence[int] | np.ndarray, fraction: float = DEFAULT_FRACTION,
                        seed: int = 0) -> Holdout:
    """Hold back ``round(fraction * n)`` images of each class present in ``labels`` (N,), chosen at random.

    All or nothing: when any class present would hold back fewer than MIN_HELD images or keep fewer than
    MIN_FIT for training, nothing is held back (``reason`` says why) and the caller calibrates on the
    training images as before. ``fraction`` 0 turns holding back off.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    if not 0.0 <= fraction < 1.0:
        raise TrainingError(f"calibration_fraction must be at least 0 and below 1, got {fraction}")
    everything = np.arange(labels.size, dtype=np.int64)
    if fraction == 0.0:
        return Holdout(everything, np.empty(0, np.int64), "calibration_fraction is 0")
    rng = np.random.default_rng(seed)
    held = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        count = int(round(fraction * members.size))
        name = "good" if value == 0 else "defect"
        if count < MIN_HELD or members.size - count < MIN_FIT:
            return Holdout(everything, np.empty(0, np.int64),
                           f"{members.size} {name} images are too few to hold {fraction:.0%} back "
                           f"(at least {MIN_HELD} held back and {MIN_FIT} kept are needed)")
        held.append(rng.choice(members, size=count, replace=False))
    held_sorted = np.sort(np.concatenate(held))
    return Holdout(np.setdiff1d(everything, held_sorted), held_sorted, "")


def describe(holdout: Holdout, calibration_labels: Sequence[int] | np.ndarray, fraction: float) -> dict:
    """The model package's record of where its thresholds came from: ``calibration_labels`` are the labels of
    the images they were set on. ``refit``: the shipped network was then fitted on all training images."""
    labels = np.asarray(calibration_labels).astype(np.int64).ravel()
    return {"source": "held-out training images" if holdout.used else "training images",
            "fraction": float(fraction), "good": int((labels == 0).sum()), "defect": int((labels != 0).sum()),
            "refit": holdout.used, "note": holdout.reason}


@contextmanager
def random_state_kept(rng: np.random.Generator) -> Iterator[None]:
    """Run the calibration copy's fit inside: torch's CPU generator and ``rng`` are put back afterwards, so the
    shipped network's fit starts from the state it would have had without the copy."""
    torch_state, rng_state = torch.get_rng_state(), rng.bit_generator.state
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        rng.bit_generator.state = rng_state
