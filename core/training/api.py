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


def check_setting_kinds(given: dict, defaults: dict, family: str, per_regime: bool = False) -> None:
    """Refuse a setting (TrainOptions.extra, e.g. from the CLI's --set) whose value is not of its default's kind,
    before training starts rather than as a TypeError minutes in. Kinds: true/false; a number (a whole number where
    the default is one); a list; text; None defaults take a number or None. ``per_regime``: a number may also be given
    as {regime: number} and such a mapping as one number. Settings without a default are not checked here."""
    def is_number(value, whole: bool = False) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (not whole or isinstance(value, int))

    def fits(value, default) -> bool:
        if default is None:
            return value is None or is_number(value)
        if isinstance(default, bool):
            return isinstance(value, bool)
        if is_number(default) or (per_regime and isinstance(default, dict)):
            example = default if is_number(default) else next(iter(default.values()))
            whole = isinstance(example, int)
            if per_regime and isinstance(value, dict):
                return set(value) <= set(SUPERVISIONS) and all(is_number(v, whole) for v in value.values())
            return is_number(value, whole)
        return isinstance(value, type(default))

    for key, value in given.items():
        if key in defaults and not fits(value, defaults[key]):
            raise TrainingError(f"{family} setting {key!r} cannot be {value!r}: its default is {defaults[key]!r}")


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
