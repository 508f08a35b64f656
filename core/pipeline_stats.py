"""Live statistics of the inspection pipeline: thread-safe counters, rates and latency percentiles.

Every frame the acquisition thread receives is accounted for exactly once, at the end, as either
``stored`` (its inspection row was committed) or one of the DROP_REASONS. While running, the rest
are ``in_flight``: frames_in == stored + sum(dropped) + in_flight, always.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

DROP_REASONS = ("dropped_queue_full", "failed_inference", "failed_storage", "shutdown")
VERDICT_NAMES = ("OK", "NG", "REVIEW")


class PipelineStats:
    """Counters written by the pipeline's threads; ``snapshot()`` gives a consistent plain dict."""

    def __init__(self, latency_window: int = 2000, rate_window: int = 512) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.frames_in = 0
        self.inferred = 0
        self.stored = 0
        self.images_kept = 0
        self.batches = 0
        self.write_batches = 0
        self.write_retries = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.verdicts = dict.fromkeys(VERDICT_NAMES, 0)
        self._latency_ms: deque[float] = deque(maxlen=latency_window)
        self._infer_ms: deque[float] = deque(maxlen=latency_window)
        self._arrivals: deque[float] = deque(maxlen=rate_window)
        self._completions: deque[float] = deque(maxlen=rate_window)
        self.errors: deque[str] = deque(maxlen=20)  # last error messages, for the log and the GUI

    # -- writers ----------------------------------------------------------------------------------
    def frame_in(self) -> None:
        with self._lock:
            self.frames_in += 1
            self._arrivals.append(time.monotonic())

    def drop(self, reason: str, count: int = 1, message: str | None = None) -> None:
        if count <= 0:
            return
        with self._lock:
            self.dropped[reason] += count
            if message:
                self.errors.append(f"{reason}: {message}")

    def inferred_batch(self, latencies_ms: list[float], verdicts: list[str], infer_ms_per_frame: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.batches += 1
            self.inferred += len(verdicts)
            self._latency_ms.extend(latencies_ms)
            self._infer_ms.append(infer_ms_per_frame)
            for verdict in verdicts:
                self.verdicts[verdict] += 1
                self._completions.append(now)

    def stored_batch(self, rows: int, images: int) -> None:
        with self._lock:
            self.stored += rows
            self.images_kept += images
            self.write_batches += 1

    def write_retry(self, message: str) -> None:
        with self._lock:
            self.write_retries += 1
            self.errors.append(f"storage retry: {message}")

    # -- reader -----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Plain dict (JSON-ready). fps: input rate over the last ~rate_window frames (0 when idle for
        2 s); fps_mean: over the whole run. latency_ms: frame arrival -> verdict, over the last
        latency_window frames."""
        now = time.monotonic()
        with self._lock:
            latencies = np.fromiter(self._latency_ms, dtype=np.float64)
            infer = np.fromiter(self._infer_ms, dtype=np.float64)
            arrivals = list(self._arrivals)
            completions = list(self._completions)
            dropped = dict(self.dropped)
            data = {
                "frames_in": self.frames_in, "inferred": self.inferred, "stored": self.stored,
                "images_kept": self.images_kept, "dropped": dropped, "dropped_total": sum(dropped.values()),
                "verdicts": dict(self.verdicts), "batches": self.batches, "write_batches": self.write_batches,
                "write_retries": self.write_retries, "errors": list(self.errors),
            }
        elapsed = now - self.started
        data["in_flight"] = data["frames_in"] - data["stored"] - data["dropped_total"]
        data["elapsed_s"] = round(elapsed, 3)
        data["fps"] = round(_rate(arrivals, now), 2)
        data["inferred_fps"] = round(_rate(completions, now), 2)
        data["fps_mean"] = round(data["frames_in"] / elapsed, 2) if elapsed > 0 else 0.0
        data["mean_batch"] = round(data["inferred"] / data["batches"], 2) if data["batches"] else 0.0
        data["latency_ms"] = _percentiles(latencies)
        data["inference_ms_per_frame"] = _percentiles(infer)
        return data


def _rate(times: list[float], now: float) -> float:
    if len(times) < 2 or now - times[-1] > 2.0:
        return 0.0
    span = times[-1] - times[0]
    return (len(times) - 1) / span if span > 0 else 0.0


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p99": None, "mean": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "mean": round(float(values.mean()), 3)}
