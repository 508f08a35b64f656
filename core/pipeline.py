"""Acquisition -> inference -> storage, on three threads joined by bounded queues. Nothing is lost silently.

    acquisition thread   source.fetch() -> frame queue (bounded; when full the OLDEST frame is dropped
                         and counted as dropped_queue_full, so the operator always sees recent parts)
    inference worker     takes every frame waiting (up to max_batch), detector.predict(batch); a batch
                         that raises is re-run frame by frame so only the bad frame is lost (failed_inference);
                         publishes the latest result for the GUI; hands records to the writer
    storage writer       batches records into one write_inspections() transaction per batch; retries a
                         busy/locked database; a batch that still fails is split to isolate bad records
                         (failed_storage)

Accounting: every frame received ends as ``stored`` or under one DROP_REASON (see core/pipeline_stats.py).
Images: NG and REVIEW always stored (with their mask); OK every ``ok_sampling``-th.
The pipeline never imports Qt; the GUI polls ``latest()`` and ``stats()`` or passes ``on_result``.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from core.acquisition.base import Frame, FrameSource, SourceState
from core.inference.result import Result, Thresholds
from core.pipeline_stats import DROP_REASONS, PipelineStats

log = logging.getLogger(__name__)

_FINAL_SOURCE_STATES = (SourceState.FINISHED, SourceState.CLOSED, SourceState.ERROR)


class DetectorLike(Protocol):
    """What the pipeline needs of a detector (core.inference.detector.Detector fits)."""

    thresholds: Thresholds

    def predict(self, images: list[np.ndarray]) -> list[Result]: ...


class ResultSink(Protocol):
    """Where inspection records go (core.storage's StationDB fits): one transaction per call, returns row ids."""

    def write_inspections(self, records: Sequence[Any]) -> list[int]: ...


@dataclass(frozen=True)
class PipelineConfig:
    """queue_size: frames waiting for inference. max_batch: frames per predict() call.
    ok_sampling: keep the image of every Nth OK frame (N >= 1); a value in (0, 1) is a fraction (0.1 = every
    10th); 0 = keep no OK image. write_batch / write_interval_s: records per transaction / longest wait to fill
    one. write_queue_size: records waiting for the writer (the inference worker waits when it is full, so a
    slow database shows up as dropped_queue_full, counted). storage_retries / storage_retry_s: attempts and
    first back-off for a failing write. fetch_timeout_s: how long one source.fetch() may block (bounds stop
    latency). max_frames: stop acquiring after this many frames (None = until stopped). drop_when_full: True =
    drop the oldest waiting frame when the queue is full, False = the acquisition thread waits for room
    (lossless); None = drop for live sources (cameras), wait for non-live ones (files read as fast as asked)."""

    queue_size: int = 8
    max_batch: int = 8
    ok_sampling: float = 100
    write_batch: int = 64
    write_interval_s: float = 0.25
    write_queue_size: int = 256
    storage_retries: int = 6
    storage_retry_s: float = 0.1
    fetch_timeout_s: float = 0.2
    max_frames: int | None = None
    keep_masks: bool = True
    drop_when_full: bool | None = None

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_batch", "write_batch", "write_queue_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"pipeline {name} must be >= 1, got {getattr(self, name)}")
        if self.ok_sampling < 0:
            raise ValueError(f"ok_sampling must be >= 0, got {self.ok_sampling}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {self.max_frames}")

    @property
    def ok_every(self) -> int:
        """Keep the image of every ok_every-th OK frame; 0 = never."""
        if self.ok_sampling <= 0:
            return 0
        if self.ok_sampling < 1:
            return max(1, round(1.0 / self.ok_sampling))
        return int(round(self.ok_sampling))


@dataclass(frozen=True)
class LatestResult:
    """The most recent verdict, for the GUI. latency_ms: frame arrival -> verdict. index: results so far."""

    frame: Frame
    result: Result
    latency_ms: float
    index: int
    thresholds: Thresholds | None = None  # of the model that produced ``result``
    model_id: Any = None


def _make_record(frame: Frame, result: Result, thresholds: Thresholds, model_id: Any, latency_ms: float,
                 keep_image: bool, keep_mask: bool) -> Any:
    from core.storage.views import InspectionRecord  # lazily: the pipeline also runs against other sinks

    verdict = getattr(result.verdict, "value", str(result.verdict))
    mask = result.mask if keep_mask and result.mask is not None and result.mask.shape == frame.image.shape[:2] \
        else None
    return InspectionRecord(
        time=datetime.now(timezone.utc), camera_id=frame.camera_id, frame_seq=frame.sequence,
        camera_timestamp_ns=frame.camera_timestamp_ns, host_timestamp=frame.host_timestamp, model_id=model_id,
        score=float(result.score), verdict=verdict, ok_threshold=float(thresholds.ok),
        ng_threshold=float(thresholds.ng), pixel_threshold=float(thresholds.pixel), latency_ms=float(latency_ms),
        width=frame.width, height=frame.height, image=frame.image if keep_image else None,
        mask=mask.astype(bool, copy=False) if mask is not None else None)


class Pipeline:
    """Runs source -> detector -> sink until stopped (or max_frames / a finite source's end).

    start(); then wait() and/or poll stats()/latest(); stop() returns the final statistics. The source is
    started and stopped by the pipeline but closed by its owner. model_id is written into every row.
    on_result(LatestResult) is called on the inference thread for each result; keep it short.
    """

    def __init__(self, source: FrameSource, detector: DetectorLike, sink: ResultSink, *,
                 model_id: Any = None, config: PipelineConfig | None = None,
                 on_result: Callable[[LatestResult], None] | None = None) -> None:
        self.source = source
        self._model: tuple[DetectorLike, Any] = (detector, model_id)  # swapped as one, read once per batch
        self.sink = sink
        self.config = config or PipelineConfig()
        self.on_result = on_result
        self._stats = PipelineStats()
        self._frames: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._records: queue.Queue = queue.Queue(maxsize=self.config.write_queue_size)
        self._stop_acquiring = threading.Event()
        self._acquisition_done = threading.Event()
        self._abort_inference = threading.Event()
        self._latest: LatestResult | None = None
        self._latest_lock = threading.Lock()
        self._ok_seen = 0
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopped = False
        self._source_error: str | None = None
        self._final: dict | None = None

    # -- public API -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise RuntimeError("pipeline already started (make a new Pipeline to run again)")
        self._started = True
        self._stats = PipelineStats()
        for name, target in (("acquisition", self._acquire), ("inference", self._infer_loop),
                             ("storage", self._write_loop)):
            thread = threading.Thread(target=target, name=f"pipeline-{name}", daemon=True)
            self._threads.append(thread)
        self._inference_thread, self._writer_thread = self._threads[1], self._threads[2]
        for thread in self._threads:
            thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until acquisition has ended (max_frames reached, finite source done, source gave up) or
        ``timeout_s`` passed. True when acquisition ended."""
        return self._acquisition_done.wait(timeout_s)

    def stop(self, drain: bool = True, timeout_s: float = 30.0) -> dict:
        """Stop acquiring; infer what is queued (drain) or count it as 'shutdown'; flush all results to the
        sink; join every thread. Returns the final statistics. Idempotent."""
        if self._final is not None:
            return self._final
        if not self._started:
            self._final = self.stats()
            return self._final
        deadline = time.monotonic() + timeout_s
        self._stop_acquiring.set()
        self._threads[0].join()  # bounded: one fetch_timeout_s (plus a reconnect attempt in progress)
        if not drain:
            self._abort_inference.set()
        with self._cond:
            self._cond.notify_all()
        self._inference_thread.join(max(0.1, deadline - time.monotonic()))
        if self._inference_thread.is_alive():  # a batch still running past the deadline: stop taking more
            self._abort_inference.set()
            with self._cond:
                self._cond.notify_all()
            self._inference_thread.join()
        with self._cond:  # anything the worker did not take (it stopped early) is counted, not forgotten
            leftover = len(self._frames)
            self._frames.clear()
        self._stats.drop("shutdown", leftover)
        self._records.put(None)  # sentinel after the last record
        self._writer_thread.join()
        for thread in self._threads:
            if thread.is_alive():
                log.error("pipeline thread %s did not stop", thread.name)
        self._stopped = True
        self._final = self.stats()
        return self._final

    def latest(self) -> LatestResult | None:
        """The most recent result (thread-safe, latest only)."""
        with self._latest_lock:
            return self._latest

    def stats(self) -> dict:
        """Live statistics (see PipelineStats.snapshot) plus the source's state and counters."""
        data = self._stats.snapshot()
        status = self.source.status
        data["source"] = {"state": status.state.value, "reason": status.reason,
                          "counters": self.source.counters.to_dict(), "camera_id": self.source.camera_id}
        if self._source_error:
            data["source"]["error"] = self._source_error
        data["running"] = self._started and not self._stopped
        if self._stopped:
            data["balanced"] = data["frames_in"] == data["stored"] + data["dropped_total"]
        return data

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    # -- acquisition thread -----------------------------------------------------------------------
    def _acquire(self) -> None:
        cfg = self.config
        try:
            try:
                self.source.start()
            except Exception as exc:
                self._source_error = f"{type(exc).__name__}: {exc}"
                log.error("source %s cannot start: %s", self.source.camera_id, exc)
                return
            drop = cfg.drop_when_full if cfg.drop_when_full is not None else getattr(self.source, "live", True)
            received = 0
            while not self._stop_acquiring.is_set():
                if cfg.max_frames is not None and received >= cfg.max_frames:
                    break
                try:
                    frame = self.source.fetch(cfg.fetch_timeout_s)
                except Exception as exc:  # a source must not raise from fetch; if it does, keep going
                    self._source_error = f"{type(exc).__name__}: {exc}"
                    log.exception("source %s: fetch raised", self.source.camera_id)
                    time.sleep(cfg.fetch_timeout_s)
                    continue
                if frame is None:
                    if self.source.state in _FINAL_SOURCE_STATES:
                        break
                    continue
                received += 1
                self._stats.frame_in()
                with self._cond:
                    if not drop:
                        while len(self._frames) >= cfg.queue_size and not self._stop_acquiring.is_set():
                            self._cond.wait(0.1)
                        if len(self._frames) >= cfg.queue_size:  # stopped while waiting for room
                            self._stats.drop("shutdown")
                            break
                    if len(self._frames) >= cfg.queue_size:
                        self._frames.popleft()
                        self._stats.drop("dropped_queue_full")
                    self._frames.append(frame)
                    self._cond.notify_all()
        finally:
            try:
                self.source.stop()
            except Exception as exc:
                log.warning("source %s: stop failed: %s", self.source.camera_id, exc)
            self._acquisition_done.set()
            with self._cond:
                self._cond.notify_all()

    # -- inference worker -------------------------------------------------------------------------
    def _next_batch(self) -> list[Frame] | None:
        """Frames waiting (up to max_batch); None when there will be no more."""
        with self._cond:
            while True:
                if self._abort_inference.is_set():
                    leftover = len(self._frames)
                    self._frames.clear()
                    self._stats.drop("shutdown", leftover)
                    return None
                if self._frames:
                    count = min(len(self._frames), self.config.max_batch)
                    batch = [self._frames.popleft() for _ in range(count)]
                    self._cond.notify_all()  # room for a waiting (lossless) acquisition thread
                    return batch
                if self._acquisition_done.is_set():
                    return None
                self._cond.wait(0.1)

    def _infer_loop(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._process(batch)
        except Exception:
            log.exception("inference worker crashed")
            with self._cond:
                leftover = len(self._frames)
                self._frames.clear()
            self._stats.drop("failed_inference", leftover, "inference worker crashed")

    @property
    def detector(self) -> DetectorLike:
        return self._model[0]

    @property
    def model_id(self) -> Any:
        return self._model[1]

    def set_detector(self, detector: DetectorLike, model_id: Any = None) -> None:
        """Swap the model of a running pipeline: the next batch uses it, and each row carries the model id
        and thresholds of the detector that produced it (no mixed batch)."""
        self._model = (detector, model_id)

    def _predict(self, frames: list[Frame], detector: DetectorLike) -> list[Result | None]:
        """Results aligned with frames; None where the detector failed on that frame."""
        try:
            results = list(detector.predict([f.image for f in frames]))
            if len(results) != len(frames):
                raise RuntimeError(f"detector returned {len(results)} results for {len(frames)} images")
            return results
        except Exception as exc:
            if len(frames) == 1:
                self._stats.drop("failed_inference", 1, f"frame {frames[0].sequence}: {type(exc).__name__}: {exc}")
                log.warning("inference failed on frame %s of %s: %s", frames[0].sequence, frames[0].camera_id, exc)
                return [None]
        # the batch failed: run frame by frame so one bad frame costs only itself
        return [r for frame in frames for r in self._predict([frame], detector)]

    def _process(self, frames: list[Frame]) -> None:
        detector, model_id = self._model
        start = time.perf_counter()
        results = self._predict(frames, detector)
        infer_ms = (time.perf_counter() - start) * 1000.0 / len(frames)
        done_ns = time.monotonic_ns()
        thresholds = detector.thresholds
        ok_every = self.config.ok_every
        latencies, verdicts, records = [], [], []
        for frame, result in zip(frames, results):
            if result is None:
                continue
            latency_ms = (done_ns - frame.host_monotonic_ns) / 1e6
            verdict = getattr(result.verdict, "value", str(result.verdict))
            if verdict == "OK":
                self._ok_seen += 1
                keep = ok_every > 0 and self._ok_seen % ok_every == 1 % ok_every
            else:
                keep = True
            try:
                records.append(_make_record(frame, result, thresholds, model_id, latency_ms, keep,
                                            self.config.keep_masks and verdict != "OK"))
            except Exception as exc:  # e.g. a result whose score is not a number: no row can be written
                self._stats.drop("failed_storage", 1, f"frame {frame.sequence}: bad result: {exc}")
                continue
            latencies.append(latency_ms)
            verdicts.append(verdict)
            with self._latest_lock:
                latest = LatestResult(frame, result, latency_ms, (self._latest.index + 1) if self._latest else 1,
                                      thresholds, model_id)
                self._latest = latest
            if self.on_result is not None:
                try:
                    self.on_result(latest)
                except Exception:
                    log.exception("on_result callback failed")
        if verdicts:
            self._stats.inferred_batch(latencies, verdicts, infer_ms)
        for record in records:
            self._records.put(record)  # blocks when the writer is behind: back-pressure to the frame queue

    # -- storage writer ---------------------------------------------------------------------------
    def _write_loop(self) -> None:
        cfg = self.config
        finished = False
        while not finished:
            try:
                first = self._records.get(timeout=cfg.write_interval_s)
            except queue.Empty:
                continue
            if first is None:
                break
            # fill the batch for up to write_interval_s: few large transactions cost far less (CPU, GIL,
            # fsync) than many small ones, and only storage waits, not the verdict on screen
            batch = [first]
            fill_until = time.monotonic() + cfg.write_interval_s
            while len(batch) < cfg.write_batch:
                try:
                    item = self._records.get(timeout=max(0.0, fill_until - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    finished = True
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[Any]) -> None:
        """One transaction for the batch, retried with back-off while the database is busy or unreachable.

        A record the database refuses (ValueError, integrity error) cannot succeed by waiting: the batch is
        split in halves until the bad record is alone, so only it is lost. A database still busy after all
        retries loses the batch, counted as failed_storage (splitting would only multiply the wait)."""
        delay = self.config.storage_retry_s
        error: Exception | None = None
        for attempt in range(self.config.storage_retries + 1):
            try:
                self.sink.write_inspections(batch)
            except ValueError as exc:
                error = exc
                break
            except Exception as exc:  # busy/locked database, connection hiccup: wait and retry
                error = exc
                if attempt < self.config.storage_retries:
                    self._stats.write_retry(f"{type(exc).__name__}: {exc}")
                    log.warning("storage write of %d records failed (%s); retry in %.2f s", len(batch), exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                continue
            self._stats.stored_batch(len(batch), sum(r.image is not None for r in batch))
            return
        busy = type(error).__name__ == "DatabaseBusyError"
        if len(batch) > 1 and not busy:
            middle = len(batch) // 2
            self._write(batch[:middle])
            self._write(batch[middle:])
            return
        first = batch[0].frame_seq
        self._stats.drop("failed_storage", len(batch),
                         f"{len(batch)} record(s) from frame {first}: {type(error).__name__}: {error}")
        log.error("%d inspection record(s) from frame %s not stored: %s", len(batch), first, error)


# ---------------------------------------------------------------------------------------------------
# headless run (inspector run --headless)
# ---------------------------------------------------------------------------------------------------
def run_headless(source: str, model_dir: str | Path | None = None, db_url: str | None = None,
                 data_dir: str | Path = "data", frames: int | None = None, detector: DetectorLike | None = None,
                 ok_sampling: float = 100, *, device: str = "auto", duration_s: float | None = None,
                 source_options: dict | None = None, config: PipelineConfig | None = None,
                 progress: Callable[[dict], None] | None = None, progress_interval_s: float = 1.0) -> dict:
    """Run source -> model -> database until ``frames`` frames were received, the source ends, ``duration_s``
    passed, or Ctrl-C; return the final statistics (what `inspector run --headless` prints).

    source: an open_source spec (genicam[:CTI[#SERIAL]], folder:DIR, synthetic). model_dir: a model package
    (ignored when ``detector`` is given). db_url: SQLAlchemy URL, None = SQLite in data_dir.
    progress(stats) is called every progress_interval_s while running (for soak tests and logs).
    """
    from core.acquisition import open_source
    from core.storage import open_database

    if detector is None:
        if model_dir is None:
            raise ValueError("run_headless needs a model package directory (--model) or a detector")
        from core.inference.detector import Detector

        detector = Detector.load(model_dir, device=device)
    base = config or PipelineConfig()
    config = PipelineConfig(**{**base.__dict__, "ok_sampling": ok_sampling, "max_frames": frames})
    db = open_database(db_url, data_dir)
    src = None
    try:
        model_id = _register_model(db, model_dir, detector)
        src = open_source(source, **(source_options or {}))
        pipeline = Pipeline(src, detector, db, model_id=model_id, config=config)
        pipeline.start()
        try:
            deadline = None if duration_s is None else time.monotonic() + duration_s
            while not pipeline.wait(progress_interval_s if progress else 0.5):
                if progress is not None:
                    progress(pipeline.stats())
                if deadline is not None and time.monotonic() >= deadline:
                    break
            if progress is not None:
                progress(pipeline.stats())  # once more at the end of acquisition, before the drain
        except KeyboardInterrupt:
            log.warning("interrupted: stopping the pipeline")
        finally:
            stats = pipeline.stop(drain=True)
        stats["model_id"] = model_id
        stats["model"] = str(model_dir) if model_dir is not None else type(detector).__name__
        stats["database_rows"] = _count_rows(db)
        return stats
    finally:
        if src is not None:
            src.close()
        db.close()


def _register_model(db: Any, model_dir: str | Path | None, detector: Any) -> int | None:
    """The model_versions id of this package (registering it if new), so every row names its model."""
    if model_dir is None:
        return None
    from core.inference.package import read_meta

    try:
        return int(db.register_model(model_dir, read_meta(model_dir)))
    except Exception as exc:  # the id is useful, not essential: log and carry on without one
        log.warning("could not register model %s in the database: %s", model_dir, exc)
        return None


def _count_rows(db: Any) -> int | None:
    count = getattr(db, "count_inspections", None)
    try:
        return int(count()) if count is not None else None
    except Exception:
        return None


__all__ = ["DROP_REASONS", "DetectorLike", "LatestResult", "Pipeline", "PipelineConfig", "ResultSink",
           "run_headless"]
