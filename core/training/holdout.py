"""Cross-fitting: thresholds set on scores of training images from copies of the network that never saw them.

A network's scores on the images it was trained on separate good from defect far better than its scores
on new parts do: on mtd every trained package scored its training images perfectly apart, so the OK and
NG thresholds met in the middle of a gap that new images do not respect, and 8-14 of 115 test defects
passed as OK. Thresholds set on images the network never trained on see what a new part sees.

So the trainers split each class of the training images into ``folds`` parts at random and fit one
calibration copy per part, without that part; each copy scores the part it did not see. Every training image
then has one out-of-fold score, and the thresholds are set on all of them. The shipped network is then fitted
on all training images, as scikit-learn's CalibratedClassifierCV(ensemble=False) does: fitting without
held-back images cost image AP on mtd (weak SuperSimpleNet 0.979 -> 0.967, CAM segmenter 0.975 -> 0.951,
3 seeds each).

Why folds and not one held-back share: with 15 % held back once (41 of mtd's 273 defects), "at most 1 % of
defects below OK" was decided by the single faintest held-back defect, and the REVIEW band swung from none
(10 test defects passed as OK) to 194 of 286 good test images between seeds of the same model. Out-of-fold
scores give the thresholds every training image (273 defects: the 1 % may hold two).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from core.inference.calibration import review_shares
from core.inference.result import Thresholds
from core.training.api import TrainingError

DEFAULT_FOLDS = 3         # each copy is fitted on two thirds of each class (SuperSimpleNet uses 2: its DEFAULTS)
MIN_HELD = 5              # fewer images of a class than this give no usable quantile
# calibration["source"] of a cross-fitted package (the Calibrate page says "set on N good and M defect <source>")
OUT_OF_FOLD = "training images, each scored by a calibration copy that never trained on it"
# ... of an unsupervised package: the shipped network's own scores, which for its defect images are unseen ones
OWN_UNSEEN_DEFECTS = ("training images, scored by the shipped network: the good ones it was fitted on, the defect ones "
                      "it never trained on")
# ... of an unsupervised package with calibration copies
OUT_OF_FOLD_GOOD_UNSEEN_DEFECTS = ("training images: the good ones each scored by a calibration copy that never "
                                   "trained on it, the defect ones by the shipped network, which never trains on them")


@dataclass(frozen=True)
class Holdout:
    """One fold, indices into the training samples: ``fit`` trains a calibration copy, ``held`` gets its scores."""

    fit: np.ndarray    # (N_fit,) int64, ascending
    held: np.ndarray   # (N_held,) int64, ascending


@dataclass(frozen=True)
class CrossFit:
    """The folds (their ``held`` parts partition the training samples); none when the data are too few."""

    folds: tuple[Holdout, ...]
    reason: str        # why there are no folds ("" when there are)

    @property
    def used(self) -> bool:
        return bool(self.folds)

    @property
    def held(self) -> np.ndarray:
        """(N,) int64: the samples in the order the folds score them (fold by fold)."""
        return np.concatenate([fold.held for fold in self.folds]) if self.folds else np.empty(0, np.int64)


def calibration_folds(labels: Sequence[int] | np.ndarray, folds: int = DEFAULT_FOLDS, seed: int = 0) -> CrossFit:
    """Split each class present in ``labels`` (N,) at random into ``folds`` parts of equal size (±1).

    All or nothing: when any class present has fewer than MIN_HELD images (or fewer than ``folds``), there are
    no folds (``reason`` says why) and the caller calibrates on the training images as before. (Each copy then
    keeps at least two images of each class.) ``folds`` 0 turns cross-fitting off; 1 is refused (no image would be left out).
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 0 or folds == 1:
        raise TrainingError(f"calibration_folds must be 0 (off) or a whole number of at least 2, got {folds!r}")
    if folds == 0:
        return CrossFit((), "calibration_folds is 0")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(labels.size, np.int64)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        if members.size < max(MIN_HELD, folds):
            name = "good" if value == 0 else "defect"
            return CrossFit((), f"{members.size} {name} images are too few for {folds} calibration copies "
                                f"(at least {max(MIN_HELD, folds)} are needed)")
        for index, part in enumerate(np.array_split(rng.permutation(members), folds)):
            fold_of[part] = index
    everything = np.arange(labels.size, dtype=np.int64)
    return CrossFit(tuple(Holdout(fit=everything[fold_of != k], held=everything[fold_of == k])
                          for k in range(folds)), "")


def describe(crossfit: CrossFit, calibration_labels: Sequence[int] | np.ndarray, folds: int,
             scores: Sequence[float] | np.ndarray, thresholds: Thresholds, source: str | None = None) -> dict:
    """The model package's record of where its thresholds came from: ``calibration_labels`` and ``scores`` (N,)
    are the labels and scores of the images they were set on. ``refit``: the shipped network was then fitted on
    all training images. ``review``: the share of those good and of those defect images sent to REVIEW
    (core.inference.calibration.review_shares), shown on the Calibrate page. ``source``: says what scored them
    where the default (OUT_OF_FOLD, or "training images" without folds) would not."""
    labels = np.asarray(calibration_labels).astype(np.int64).ravel()
    return {"source": source or (OUT_OF_FOLD if crossfit.used else "training images"),
            "folds": int(folds) if crossfit.used else 0, "good": int((labels == 0).sum()),
            "defect": int((labels != 0).sum()), "refit": crossfit.used, "note": crossfit.reason,
            "review": review_shares(np.asarray(scores), labels, thresholds)}


@contextmanager
def random_state_kept(rng: np.random.Generator) -> Iterator[None]:
    """Run a calibration copy's fit inside: torch's CPU generator and ``rng`` are put back afterwards, so the
    shipped network's fit starts from the state it would have had without the copies."""
    torch_state, rng_state = torch.get_rng_state(), rng.bit_generator.state
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        rng.bit_generator.state = rng_state
