"""The line as the GUI sees it: start/stop the core pipeline off the main thread, hand out the latest result
and the live statistics, and swap the model without stopping the line.

All calls are made from the main thread and return at once; opening a camera, loading a model and stopping
the pipeline run in worker threads. ``latest()`` and ``stats()`` only read the pipeline's thread-safe slots.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

from inspector import workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveFrame:
    """One displayed result. image: (H, W) or (H, W, 3) uint8/uint16; anomaly_map float32 (H, W); mask bool (H, W)."""

    sequence: int
    image: np.ndarray
    score: float
    verdict: str
    anomaly_map: np.ndarray | None
    mask: np.ndarray | None
    ok: float
    ng: float
    pixel: float


class LineController(QObject):
    """Owns at most one running pipeline. Signals fire on the main thread."""

    running_changed = Signal(bool)
    busy_changed = Signal(bool)       # a start/stop/swap is in progress
    model_loaded = Signal(str)        # name of the model now in use
    error = Signal(str)

    def __init__(self, context) -> None:
        super().__init__()
        self.context = context
        self.pipeline = None
        self.detector = None
        self.model_id: int | None = None
        self.session_model: tuple[Path, int] | None = None  # (package, id) from `inspector run --model`
        self.busy = False
        context.settings_changed.connect(self._settings_changed)

    def _settings_changed(self, _settings) -> None:
        """Threshold override or device changed: load the model afresh at the next start."""
        if not self.running and not self.busy:
            self.detector = None

    @property
    def running(self) -> bool:
        return self.pipeline is not None

    # -- start / stop -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.running or self.busy:
            return
        if not self.context.require("start_stop"):
            return
        self._set_busy(True)
        settings, db, data_dir = self.context.settings, self.context.db, self.context.data_dir

        def work():
            if self.detector is None:
                if self.session_model is not None:
                    path, model_id = self.session_model
                    self.detector, self.model_id = _load_detector(path, settings.model.device), model_id
                else:
                    self.detector, self.model_id = load_active_detector(db, settings.model.device)
                apply_threshold_override(self.detector, settings)
            return build_pipeline(settings, db, self.detector, self.model_id)

        def done(pipeline) -> None:
            self.pipeline = pipeline
            self._set_busy(False)
            self._audit("line_start", {"source": settings.camera.source, "model_id": self.model_id})
            self.model_loaded.emit(self.detector.name)
            self.running_changed.emit(True)

        def failed(message: str) -> None:
            self._set_busy(False)
            self.error.emit(f"The line could not start: {message}")

        workers.submit(work, done, failed, "line-start")

    def stop(self, audit: bool = True) -> None:
        if not self.running or self.busy:
            return
        if audit and not self.context.require("start_stop"):
            return
        pipeline, self.pipeline = self.pipeline, None
        self._set_busy(True)

        def done(_result) -> None:
            self._set_busy(False)
            if audit:
                self._audit("line_stop", {})
            self.running_changed.emit(False)

        def failed(message: str) -> None:
            self._set_busy(False)
            self.running_changed.emit(False)
            self.error.emit(f"The line did not stop cleanly: {message}")

        workers.submit(lambda: stop_pipeline(pipeline), done, failed, "line-stop")

    def shutdown(self) -> None:
        """Blocking stop for application exit."""
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            try:
                stop_pipeline(pipeline)
            except Exception:
                log.exception("pipeline stop at exit failed")

    # -- model swap -------------------------------------------------------------------------------
    def use_model(self, package_path: str | Path, model_id: int | None) -> None:
        """Load ``package_path`` in a worker and hand it to the running pipeline (no stop)."""
        device = self.context.settings.model.device
        self._set_busy(True)

        def done(detector) -> None:
            self.detector, self.model_id = detector, model_id
            self.session_model = None  # a promotion or roll back replaces the session's model
            if self.pipeline is not None:
                swap_detector(self.pipeline, detector, model_id)
            self._set_busy(False)
            self.model_loaded.emit(detector.name)

        def failed(message: str) -> None:
            self._set_busy(False)
            self.error.emit(f"The model could not be loaded, the line keeps the previous one: {message}")

        settings = self.context.settings

        def load():
            detector = _load_detector(package_path, device)
            apply_threshold_override(detector, settings)
            return detector

        workers.submit(load, done, failed, "model-load")

    def set_thresholds(self, thresholds) -> None:
        if self.detector is not None:
            self.detector.thresholds = thresholds

    # -- reading ----------------------------------------------------------------------------------
    def latest(self) -> LiveFrame | None:
        return None if self.pipeline is None else live_frame(self.pipeline)

    def stats(self) -> dict:
        return {} if self.pipeline is None else stats_dict(self.pipeline)

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.busy_changed.emit(busy)

    def _audit(self, action: str, detail: dict) -> None:
        db, user = self.context.db, self.context.user
        workers.submit(lambda: db.audit(user, action, detail), on_error=lambda m: log.error("audit failed: %s", m))


# -- adapters to core (the only place that knows the pipeline's shape) -------------------------------
def _load_detector(package_path, device: str):
    from core.inference.detector import Detector

    return Detector.load(package_path, device=device)


def load_active_detector(db, device: str):
    """(Detector, model id) of the database's active model (worker thread)."""
    active = db.active_model()
    if active is None:
        raise RuntimeError("no model is active yet: train one on the Model page, then promote it")
    return _load_detector(active.package_path, device), active.id


def apply_threshold_override(detector, settings) -> None:
    """The settings' OK/NG thresholds, when set, replace the model's (the pixel threshold stays)."""
    from core.inference.result import Thresholds

    ok, ng = settings.model.ok_threshold, settings.model.ng_threshold
    if ok is not None and ng is not None:
        detector.thresholds = Thresholds(ok=ok, ng=ng, pixel=detector.thresholds.pixel)


def build_pipeline(settings, db, detector, model_id):
    """Open the configured source and start a pipeline on it (worker thread)."""
    from core.acquisition import source_from_settings
    from core.pipeline import Pipeline, PipelineConfig

    source = source_from_settings(settings.camera)
    try:
        pipeline = Pipeline(source, detector, db, model_id=model_id,
                            config=PipelineConfig(ok_sampling=settings.storage.ok_sampling))
        pipeline.start()
    except BaseException:
        source.close()
        raise
    return pipeline


def stop_pipeline(pipeline) -> dict:
    """Stop (draining what is queued, so every frame gets its row) and release the source."""
    try:
        return pipeline.stop()
    finally:
        pipeline.source.close()


def swap_detector(pipeline, detector, model_id) -> None:
    """Hand a new model to a running pipeline: the inference thread reads ``detector`` per batch."""
    pipeline.set_detector(detector, model_id)


def live_frame(pipeline) -> LiveFrame | None:
    latest = pipeline.latest()
    if latest is None:
        return None
    frame, result, thresholds = latest.frame, latest.result, latest.thresholds or pipeline.detector.thresholds
    return LiveFrame(sequence=latest.index, image=frame.image, score=float(result.score),
                     verdict=getattr(result.verdict, "value", str(result.verdict)), anomaly_map=result.anomaly_map,
                     mask=result.mask, ok=thresholds.ok, ng=thresholds.ng, pixel=thresholds.pixel)


def stats_dict(pipeline) -> dict:
    """The pipeline's statistics flattened to what the screens show."""
    stats = pipeline.stats()
    latency = stats.get("latency_ms") or {}
    source = stats.get("source") or {}
    return {"fps": stats.get("fps", 0.0), "inferred_fps": stats.get("inferred_fps", 0.0),
            "latency_p50_ms": latency.get("p50") or 0.0, "latency_p99_ms": latency.get("p99") or 0.0,
            "frames_in": stats.get("frames_in", 0), "inferred": stats.get("inferred", 0),
            "stored": stats.get("stored", 0), "dropped": stats.get("dropped_total", 0),
            "dropped_by_reason": stats.get("dropped", {}), "verdicts": stats.get("verdicts", {}),
            "source_state": source.get("state", "stopped"),
            "source_reason": source.get("error") or source.get("reason", ""), "errors": stats.get("errors", [])}
