"""The FrameSource protocol every source follows, the Frame it yields, and the shared state/counter plumbing.

A source is driven from ONE thread (the pipeline's acquisition thread): start(), then fetch() in a loop,
then stop()/close(). Its state and counters may be read from any thread (the GUI polls them or listens).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Callable, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One image from a source.

    image: station convention, (H, W) grey or (H, W, 3) RGB, uint8 or uint16, owned (never a view into a
        camera buffer).
    camera_id: which camera/source produced it (serial number, folder path, "synthetic").
    sequence: the source's own frame counter, strictly increasing over the source's life (reconnects too).
    camera_timestamp_ns: the camera's timestamp when it has one, else None.
    host_timestamp: UTC wall-clock time at which the host received the frame.
    host_monotonic_ns: time.monotonic_ns() at the same moment (for latencies; immune to clock steps).
    pixel_format: the format the data arrived in (PFNC name such as "Mono8", "BayerRG8"; "file" for files).
    camera_frame_id: the producer's frame id (resets on reconnect), when it has one.
    origin: for file sources, the file the frame came from.
    """

    image: np.ndarray
    camera_id: str
    sequence: int
    camera_timestamp_ns: int | None
    host_timestamp: datetime
    host_monotonic_ns: int
    pixel_format: str
    camera_frame_id: int | None = None
    origin: str | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def host_now() -> tuple[datetime, int]:
    """(UTC wall-clock, monotonic ns) taken together, for Frame.host_timestamp / host_monotonic_ns."""
    return datetime.now(timezone.utc), time.monotonic_ns()


class SourceState(str, Enum):
    """Lifecycle of a source, as the GUI shows it."""

    STOPPED = "stopped"          # opened (or never started); not delivering frames
    STREAMING = "streaming"      # delivering frames
    RECONNECTING = "reconnecting"  # lost its device; trying again with backoff
    ERROR = "error"              # gave up (or cannot start); reason says why
    FINISHED = "finished"        # a finite source (folder without loop) has delivered everything
    CLOSED = "closed"            # released for good


@dataclass(frozen=True)
class SourceStatus:
    """State plus a human-readable reason (empty when there is nothing to say) and when it began."""

    state: SourceState
    reason: str = ""
    since: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict:
        return {"state": self.state.value, "reason": self.reason}


@dataclass
class SourceCounters:
    """What happened at the source. frames: delivered by fetch(). timeouts: fetch() calls that returned no
    frame in time. incomplete: buffers the producer delivered incomplete (discarded). reconnects: successful
    re-openings after a loss. lost: frames the camera numbered but never delivered (gaps in its frame id).
    errors: other failures (unreadable file, conversion failure, device errors)."""

    frames: int = 0
    timeouts: int = 0
    incomplete: int = 0
    reconnects: int = 0
    lost: int = 0
    errors: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


StateListener = Callable[[SourceStatus], None]


@runtime_checkable
class FrameSource(Protocol):
    """What the pipeline and the GUI rely on. See the module docstring for the threading rule."""

    camera_id: str
    live: bool  # True: frames keep coming whether or not they are taken (a camera); see SourceBase.live

    def start(self) -> None:
        """Begin delivering frames (idempotent). Raises SourceError when the source cannot start."""

    def fetch(self, timeout_s: float) -> Frame | None:
        """The next frame, or None when none arrived within ``timeout_s`` (or the source is not streaming)."""

    def stop(self) -> None:
        """Stop delivering frames; the source can be started again."""

    def close(self) -> None:
        """Release everything (device, buffers, threads). Idempotent; the source is unusable afterwards."""

    @property
    def status(self) -> SourceStatus: ...

    @property
    def state(self) -> SourceState: ...

    @property
    def counters(self) -> SourceCounters: ...

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(status)`` on every state change (from the source's driving thread)."""


class SourceError(RuntimeError):
    """A source cannot be opened, configured or started; the message names the source and the reason."""


class SourceBase:
    """State, counters and listeners shared by all sources; subclasses implement the I/O.

    Counters are only ever incremented through ``_count`` (under a lock) so readers get consistent snapshots.
    """

    #: A live source (camera, or a replay paced like one) cannot wait: when the pipeline falls behind, it drops
    #: the oldest frames. A non-live source (files as fast as asked) is read losslessly instead.
    live: bool = True

    def __init__(self, camera_id: str) -> None:
        self.camera_id = camera_id
        self._status = SourceStatus(SourceState.STOPPED)
        self._counters = SourceCounters()
        self._meta_lock = threading.Lock()
        self._listeners: list[StateListener] = []
        self._sequence = 0

    # -- observable state -------------------------------------------------------------------------
    @property
    def status(self) -> SourceStatus:
        return self._status

    @property
    def state(self) -> SourceState:
        return self._status.state

    @property
    def counters(self) -> SourceCounters:
        with self._meta_lock:
            return SourceCounters(**asdict(self._counters))

    def add_state_listener(self, listener: StateListener) -> None:
        with self._meta_lock:
            self._listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        with self._meta_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _set_state(self, state: SourceState, reason: str = "") -> None:
        if self._status.state == state and self._status.reason == reason:
            return
        status = SourceStatus(state, reason)
        self._status = status
        if state in (SourceState.ERROR, SourceState.RECONNECTING):
            log.warning("%s: %s %s", self.camera_id, state.value, reason)
        else:
            log.info("%s: %s %s", self.camera_id, state.value, reason)
        with self._meta_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(status)
            except Exception:  # a broken listener must not break acquisition
                log.exception("%s: state listener failed", self.camera_id)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._meta_lock:
            setattr(self._counters, name, getattr(self._counters, name) + amount)

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    # -- context manager --------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # type: ignore[attr-defined]


class Pacer:
    """Paces a software source at ``rate_hz`` frames/s (None or 0 = as fast as asked).

    wait(timeout_s) sleeps until the next frame is due and returns True, or returns False when it is not
    due within ``timeout_s``. A source that falls behind does not burst to catch up.
    """

    def __init__(self, rate_hz: float | None) -> None:
        if rate_hz is not None and rate_hz < 0:
            raise ValueError(f"rate must be >= 0 frames/s, got {rate_hz}")
        self.period = 1.0 / rate_hz if rate_hz else 0.0
        self._due = time.monotonic()

    def reset(self) -> None:
        self._due = time.monotonic()

    def wait(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        if self.period == 0.0:
            return True
        now = time.monotonic()
        delay = self._due - now
        if delay > timeout_s:
            if stop is not None:
                stop.wait(max(0.0, timeout_s))
            else:
                time.sleep(max(0.0, timeout_s))
            return False
        if delay > 0:
            if stop is not None and stop.wait(delay):
                return False
            if stop is None:
                time.sleep(delay)
        # no catch-up bursts: the next frame is one period after this one or after now, whichever is later
        self._due = max(self._due + self.period, time.monotonic())
        return True


class PacedSource(SourceBase):
    """A software source (folder replay, synthetic camera) paced by a Pacer: shared start/stop/close and
    the wait before each frame. Subclasses implement ``fetch`` starting with ``if not self._frame_due(...)``."""

    def __init__(self, camera_id: str, rate_hz: float | None) -> None:
        super().__init__(camera_id=camera_id)
        self._pacer = Pacer(rate_hz)
        self._stop = threading.Event()

    def start(self) -> None:
        if self.state == SourceState.CLOSED:
            raise SourceError(f"{self.camera_id}: the source is closed")
        if self.state in (SourceState.STREAMING, SourceState.FINISHED):
            return
        self._stop.clear()
        self._pacer.reset()
        self._set_state(SourceState.STREAMING)

    def stop(self) -> None:
        self._stop.set()
        if self.state == SourceState.STREAMING:
            self._set_state(SourceState.STOPPED)

    def close(self) -> None:
        self._stop.set()
        self._set_state(SourceState.CLOSED)

    def _streaming_or_wait(self, timeout_s: float) -> bool:
        """True when streaming; otherwise waits briefly (so a polling caller does not spin) and says False."""
        if self.state == SourceState.STREAMING:
            return True
        self._stop.wait(min(max(timeout_s, 0.0), 0.05))
        return False

    def _frame_due(self, timeout_s: float) -> bool:
        """Waits for the next frame's time; False (a counted timeout unless stopping) when not due in time."""
        if self._pacer.wait(timeout_s, self._stop):
            return True
        if not self._stop.is_set():
            self._count("timeouts")
        return False
