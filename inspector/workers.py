"""Running slow work off the Qt main thread, and getting results back on it.

``submit(fn, on_done=..., on_error=...)`` runs ``fn()`` in a thread pool; the callbacks run on the main
thread (queued signal delivery), so they may touch widgets. Errors reach ``on_error`` as plain words and
the traceback goes to the log. ``Latest`` keeps only the newest request of a kind (e.g. image loads
while the operator scrolls), so a fast scroll never queues up stale work.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)


def plain_error(exc: BaseException) -> str:
    """An exception as a sentence for the operator (no traceback)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return f"The disk is full: {text}"
    if isinstance(exc, PermissionError) and type(exc).__name__ == "PermissionDenied":
        return f"Not allowed: {text}"
    return text[0].upper() + text[1:] if text else text


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(str)


class _Task(QRunnable):
    def __init__(self, fn: Callable[[], Any], signals: _Signals, name: str) -> None:
        super().__init__()
        self.fn, self.signals, self.name = fn, signals, name
        self.setAutoDelete(True)

    def run(self) -> None:
        try:
            result = self.fn()
        except BaseException as exc:  # reported, never lost
            log.exception("background task %s failed", self.name)
            self.signals.failed.emit(plain_error(exc))
            return
        self.signals.done.emit(result)


_live: set[_Signals] = set()  # keep signal objects alive until their result has been delivered
_lock = threading.Lock()
_pool: QThreadPool | None = None


def keep_main_thread_responsive() -> None:
    """Shorten the interpreter's thread switch interval (default 5 ms) to 1 ms.

    Every call from Qt into Python (a table's data(), a slot) must take the GIL; while a worker or pipeline
    thread runs Python code the main thread waits up to one switch interval per call, and a table repaint
    makes hundreds of such calls. Measured with benchmarks/live_view.py (Review with 20,000 rows): see the
    report. The cost is a little more switching overhead in the background threads.
    """
    if sys.getswitchinterval() > 0.001:
        sys.setswitchinterval(0.001)


def pool() -> QThreadPool:
    global _pool
    if _pool is None:
        _pool = QThreadPool()
        _pool.setMaxThreadCount(3)
    return _pool


def submit(fn: Callable[[], Any], on_done: Callable[[Any], None] | None = None,
           on_error: Callable[[str], None] | None = None, name: str = "") -> None:
    """Run ``fn()`` off the main thread; call ``on_done(result)`` or ``on_error(message)`` on the main thread.

    Must be called from the main thread (the signal object is created there)."""
    signals = _Signals()
    with _lock:
        _live.add(signals)

    def finish() -> None:
        with _lock:
            _live.discard(signals)

    if on_done is not None:
        signals.done.connect(on_done)
    if on_error is not None:
        signals.failed.connect(on_error)
    signals.done.connect(finish)
    signals.failed.connect(finish)
    pool().start(_Task(fn, signals, name or getattr(fn, "__name__", "task")))


class Latest:
    """Submit work where only the newest request matters: answers to superseded requests are dropped."""

    def __init__(self) -> None:
        self._generation = 0

    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], None],
               on_error: Callable[[str], None] | None = None, name: str = "") -> None:
        self._generation += 1
        mine = self._generation

        def done(result: Any) -> None:
            if mine == self._generation:
                on_done(result)

        def failed(message: str) -> None:
            if mine == self._generation and on_error is not None:
                on_error(message)

        submit(fn, done, failed, name)


def wait_idle(timeout_ms: int = 10_000) -> bool:
    """Wait for all background tasks (tests and shutdown)."""
    return pool().waitForDone(timeout_ms)
