"""Plain data passed in and out of StationDB: frozen dataclasses, never ORM objects.

Views are detached snapshots, so the GUI and worker threads can hold and share them safely.
All datetimes are timezone-aware UTC.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

VERDICTS: tuple[str, ...] = ("OK", "NG", "REVIEW")
LABELS: tuple[str, ...] = ("OK", "NG")
RUN_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class InspectionRecord:
    """One inferred frame, as the pipeline hands it to ``StationDB.write_inspections``.

    time, host_timestamp: tz-aware datetimes (stored as UTC). camera_timestamp_ns: the camera's own clock.
    image: (height, width) grey or (height, width, 3) RGB, uint8/uint16, or None when the image is not kept.
    mask: bool (height, width) predicted defect mask, or None.
    """

    time: datetime
    camera_id: str
    frame_seq: int
    camera_timestamp_ns: int | None
    host_timestamp: datetime
    model_id: int | None
    score: float
    verdict: str
    ok_threshold: float
    ng_threshold: float
    pixel_threshold: float
    latency_ms: float
    width: int
    height: int
    image: np.ndarray | None = None
    mask: np.ndarray | None = None

    def validate(self, index: int = 0) -> None:
        """Raise ValueError naming the record and the field that cannot be stored."""
        where = f"inspection record {index} (camera {self.camera_id!r}, frame {self.frame_seq})"
        verdict = getattr(self.verdict, "value", self.verdict)
        if verdict not in VERDICTS:
            raise ValueError(f"{where}: verdict {self.verdict!r} is not one of {VERDICTS}")
        for name in ("time", "host_timestamp"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise ValueError(f"{where}: {name} must be a timezone-aware datetime, got {value!r}")
        for name in ("score", "ok_threshold", "ng_threshold", "pixel_threshold", "latency_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(float(value)):
                raise ValueError(f"{where}: {name} must be a finite number, got {value!r}")
        if not isinstance(self.frame_seq, (int, np.integer)) or isinstance(self.frame_seq, bool):
            raise ValueError(f"{where}: frame_seq must be an integer, got {self.frame_seq!r}")
        if self.camera_timestamp_ns is not None and not isinstance(self.camera_timestamp_ns, (int, np.integer)):
            raise ValueError(f"{where}: camera_timestamp_ns must be an integer or None, got {self.camera_timestamp_ns!r}")
        if self.model_id is not None and not isinstance(self.model_id, (int, np.integer)):
            raise ValueError(f"{where}: model_id must be an integer or None, got {self.model_id!r}")
        if not isinstance(self.camera_id, str) or not self.camera_id or len(self.camera_id) > 128:
            raise ValueError(f"{where}: camera_id must be a non-empty string of at most 128 characters")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"{where}: width and height must be positive, got {self.width}x{self.height}")
        if self.image is not None:
            image = self.image
            if not isinstance(image, np.ndarray) or image.dtype not in (np.uint8, np.uint16) \
                    or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
                raise ValueError(f"{where}: image must be a (H, W) or (H, W, 3) uint8/uint16 array")
            if image.shape[:2] != (int(self.height), int(self.width)):
                raise ValueError(f"{where}: image is {image.shape[1]}x{image.shape[0]} but the record says "
                                 f"{self.width}x{self.height}")
        if self.mask is not None:
            check_mask(self.mask, int(self.height), int(self.width), where)


def check_mask(mask: np.ndarray, height: int, width: int, where: str) -> None:
    """Raise ValueError unless ``mask`` is a bool (height, width) array."""
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError(f"{where}: mask must be a bool (H, W) array")
    if mask.shape != (height, width):
        raise ValueError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}")


@dataclass(frozen=True)
class InspectionView:
    """A stored inspection with its current operator tag (label fields None when untagged).

    image_path / mask_path: relative to the data directory (None when no file was kept).
    label_mask_path: the mask drawn with the current tag, relative to the data directory, or None.
    """

    id: int
    time: datetime
    camera_id: str
    frame_seq: int
    camera_timestamp_ns: int | None
    host_timestamp: datetime
    model_id: int | None
    score: float
    verdict: str
    ok_threshold: float
    ng_threshold: float
    pixel_threshold: float
    latency_ms: float
    width: int
    height: int
    image_path: str | None
    image_sha256: str | None
    mask_path: str | None
    label: str | None
    label_user: str | None
    label_time: datetime | None
    label_mask_path: str | None

    @property
    def tagged(self) -> bool:
        return self.label is not None

    @property
    def has_image(self) -> bool:
        return self.image_path is not None


@dataclass(frozen=True)
class LabelView:
    """One operator tag in an inspection's history (newest is_current)."""

    id: int
    inspection_id: int
    label: str
    mask_path: str | None
    user_name: str
    time: datetime
    is_current: bool


@dataclass(frozen=True)
class User:
    """A station user (no password material)."""

    id: int
    name: str
    role: str
    active: bool
    created: datetime | None = None


@dataclass(frozen=True)
class ModelVersionView:
    """A registered model package. meta: its model.json contents (a copy)."""

    id: int
    package_path: str
    family: str
    name: str
    meta: dict
    created: datetime
    is_active: bool
    activated_at: datetime | None


@dataclass(frozen=True)
class TrainingRunView:
    """A retraining job: status in RUN_STATUSES, progress 0..1, the current stage and the log so far."""

    id: int
    family: str
    supervision: str
    dataset_path: str
    status: str
    progress: float
    stage: str
    log: str
    result_path: str | None
    user_name: str | None
    created: datetime
    started: datetime | None
    finished: datetime | None

    @property
    def finished_ok(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log: who did what, when, with details."""

    id: int
    time: datetime
    user_name: str | None
    action: str
    detail: dict


def utc(value: datetime, name: str = "time") -> datetime:
    """A tz-aware datetime converted to UTC; naive datetimes are refused (their zone is unknown)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(timezone.utc)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
