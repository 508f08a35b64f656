"""What every trainer takes and reports: options, progress events, cancellation; and the trainer registry.

A family's trainer is ``train(dataset: Dataset, options: TrainOptions, progress: Progress) -> Path`` and
writes a complete model package to ``options.out`` (core.inference.package.save_package).
"""
from __future__ import annotations

import importlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol

from core.data.dataset import Dataset

Supervision = Literal["unsupervised", "weak", "mixed", "full"]
SUPERVISIONS: tuple[str, ...] = ("unsupervised", "weak", "mixed", "full")


class TrainingCancelled(Exception):
    """Raised inside a trainer when its cancel token is set."""


class TrainingError(ValueError):
    """Training cannot start or go on (e.g. the dataset does not fit the chosen supervision)."""


@dataclass
class TrainOptions:
    out: Path
    supervision: Supervision = "weak"
    epochs: int | None = None          # None: the family's default for the device
    device: str = "auto"
    seed: int = 0
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None  # file with torchvision-format weights (wide_resnet50_2)
    extra: dict = field(default_factory=dict)  # family-specific overrides (e.g. {"paper": True})
    cancel: threading.Event | None = None

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TrainingCancelled("training was cancelled")


@dataclass
class ProgressEvent:
    """One progress report. fraction: 0..1 of the whole run; eta_s: seconds left (None if unknown)."""

    stage: str
    fraction: float
    message: str = ""
    eta_s: float | None = None
    metrics: dict = field(default_factory=dict)


class Progress(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


class StderrProgress:
    """Prints progress lines on stderr, at most one every ``interval_s`` unless the stage changes."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self._last = 0.0
        self._stage = ""

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.stage == self._stage and now - self._last < self.interval_s and event.fraction < 1.0:
            return
        self._last, self._stage = now, event.stage
        eta = f"  ~{_fmt_seconds(event.eta_s)} left" if event.eta_s is not None else ""
        metrics = "  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in event.metrics.items()) if event.metrics else ""
        print(f"[{event.stage}] {100 * event.fraction:5.1f}%  {event.message}{metrics}{eta}",
              file=sys.stderr, flush=True)


class EtaClock:
    """Estimates time left from the fraction done since it was started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def eta(self, fraction: float) -> float | None:
        if fraction <= 0.0:
            return None
        elapsed = time.monotonic() - self.start
        return max(0.0, elapsed * (1.0 - fraction) / fraction)


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


TrainFn = Callable[[Dataset, TrainOptions, Progress], Path]
_TRAINER_MODULES: dict[str, str] = {
    "baseline": "core.training.baseline_trainer",
    "supersimplenet": "core.training.supersimplenet_trainer",
    "cam": "core.training.cam_trainer",
}


def trainer_for(family: str) -> TrainFn:
    """The ``train`` function of a family (imported lazily)."""
    if family not in _TRAINER_MODULES:
        raise TrainingError(f"unknown family {family!r}; choose one of {', '.join(sorted(_TRAINER_MODULES))}")
    try:
        module = importlib.import_module(_TRAINER_MODULES[family])
    except ModuleNotFoundError as exc:
        if exc.name == _TRAINER_MODULES[family]:
            raise TrainingError(f"the {family!r} family is not available in this build") from exc
        raise
    return module.train
