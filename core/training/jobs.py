"""Retraining jobs: train (and evaluate) a model family in a child process, report progress, allow cancel.

The parent never blocks: ``TrainingJob.poll()`` drains the child's messages without waiting, so a GUI can
call it from a timer. The job writes a model package to ``JobSpec.out`` and returns its path; it never
registers or activates the model (promotion is the user's decision, made elsewhere).

Child -> parent messages on a multiprocessing queue (plain tuples, picklable under 'spawn'):
    ("progress", ProgressEvent fields as dict)   ("log", text)
    ("compare", figures of JobSpec.compare_with on the same test split)
    ("done", package path as str)   ("error", text)   ("cancelled", text)
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_module
import time
import traceback
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from core.models.backbone_names import DEFAULT_BACKBONE
from core.training.api import ProgressEvent

log = logging.getLogger(__name__)

# After a cancel request the child gets this long to notice its cancel token before it is terminated.
CANCEL_GRACE_S = 10.0


class JobState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class JobSpec:
    """What to train. ``dataset`` is a dataset folder; ``out`` the package directory to write.

    evaluate: after training, evaluate the package on the dataset's test split (core.evaluation) and store
    the figures in its model.json, still inside the child.
    compare_with: another package (the active model) to evaluate on the same test split, so the two can be
    compared on the same images; its figures are reported (message "compare"), its package is not touched.
    """

    dataset: Path
    family: str
    out: Path
    supervision: str = "weak"
    backbone: str = DEFAULT_BACKBONE
    epochs: int | None = None
    device: str = "auto"
    seed: int = 0
    extra: dict = field(default_factory=dict)
    evaluate: bool = True
    threads: int | None = None  # torch CPU threads in the child; None = torch's default
    compare_with: Path | None = None


@dataclass
class JobMessage:
    kind: str                     # "progress" | "log" | "compare" | "done" | "error" | "cancelled"
    event: ProgressEvent | None = None
    text: str = ""
    figures: dict | None = None


class TrainingJob:
    """One training run in a spawned child process.

    start() -> returns at once; poll() -> list[JobMessage] (non-blocking); cancel(); wait(timeout).
    After the end, ``state`` is DONE (``result`` = package path), FAILED (``error``) or CANCELLED.
    """

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.state = JobState.PENDING
        self.result: Path | None = None
        self.error: str | None = None
        self.last_event: ProgressEvent | None = None
        self.compare_figures: dict | None = None  # the compared package's figures on the same test split
        self._ctx = mp.get_context("spawn")  # never fork a process that may hold Qt/torch threads
        self._queue = self._ctx.Queue()
        self._cancel = self._ctx.Event()
        self._process: mp.process.BaseProcess | None = None
        self._cancel_requested_at: float | None = None

    def start(self) -> None:
        if self.state is not JobState.PENDING:
            raise RuntimeError("a training job can be started only once")
        self._process = self._ctx.Process(target=_child_main, args=(_spec_to_dict(self.spec), self._queue, self._cancel),
                                          name=f"train-{self.spec.family}", daemon=True)
        self._process.start()
        self.state = JobState.RUNNING
        log.info("training job started: family=%s dataset=%s out=%s pid=%s", self.spec.family, self.spec.dataset,
                 self.spec.out, self._process.pid)

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)

    def cancel(self) -> None:
        """Ask the child to stop at its next check; it is terminated if it has not stopped after a grace time."""
        if self.finished or self._process is None:
            return
        self._cancel.set()
        if self._cancel_requested_at is None:
            self._cancel_requested_at = time.monotonic()

    def poll(self) -> list[JobMessage]:
        """Messages that arrived since the last call; updates ``state``. Never blocks."""
        messages: list[JobMessage] = []
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue_module.Empty:
                break
            except (EOFError, OSError):  # queue torn down with the child
                break
            messages.append(self._absorb(kind, payload))
        if not self.finished and self._process is not None and not self._process.is_alive():
            # The child ended: read what it left on the queue (a short wait: the feeder thread may lag).
            try:
                while True:
                    kind, payload = self._queue.get(timeout=0.2)
                    messages.append(self._absorb(kind, payload))
            except (queue_module.Empty, EOFError, OSError):
                pass
            if not self.finished:
                code = self._process.exitcode
                if self._cancel.is_set():
                    self.state = JobState.CANCELLED
                    messages.append(JobMessage("cancelled", text="training was cancelled"))
                else:
                    self.state, self.error = JobState.FAILED, f"the training process ended unexpectedly (exit code {code})"
                    messages.append(JobMessage("error", text=self.error))
        if (not self.finished and self._cancel_requested_at is not None
                and time.monotonic() - self._cancel_requested_at > CANCEL_GRACE_S and self._process is not None):
            log.warning("training child did not stop within %.0f s of cancel; terminating it", CANCEL_GRACE_S)
            self._process.terminate()
            self._process.join(2.0)
            self.state = JobState.CANCELLED
            messages.append(JobMessage("cancelled", text="training was cancelled (process terminated)"))
        if self.finished and self._process is not None and not self._process.is_alive():
            self._process.join(0)
        return messages

    def wait(self, timeout: float | None = None, on_message=None) -> JobState:
        """Block until the job ends (or ``timeout`` seconds); for scripts and tests, never for a GUI thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            for message in self.poll():
                if on_message is not None:
                    on_message(message)
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return self.state

    def kill(self) -> None:
        """Terminate the child at once (application shutdown)."""
        if self._process is not None and self._process.is_alive():
            self._cancel.set()
            self._process.terminate()
            self._process.join(2.0)
        if not self.finished:
            self.state = JobState.CANCELLED

    def _absorb(self, kind: str, payload) -> JobMessage:
        if kind == "progress":
            event = ProgressEvent(**payload)
            self.last_event = event
            return JobMessage("progress", event=event, text=event.message)
        if kind == "compare":
            self.compare_figures = dict(payload)
            return JobMessage("compare", figures=self.compare_figures)
        if kind == "done":
            self.state, self.result = JobState.DONE, Path(payload)
            return JobMessage("done", text=str(payload))
        if kind == "error":
            self.state, self.error = JobState.FAILED, str(payload)
            return JobMessage("error", text=str(payload))
        if kind == "cancelled":
            self.state = JobState.CANCELLED
            return JobMessage("cancelled", text=str(payload))
        return JobMessage("log", text=str(payload))


def _spec_to_dict(spec: JobSpec) -> dict:
    data = asdict(spec)
    data["dataset"], data["out"] = str(spec.dataset), str(spec.out)
    data["compare_with"] = None if spec.compare_with is None else str(spec.compare_with)
    return data


def _child_main(spec_data: dict, out_queue, cancel_event) -> None:
    """Entry point of the child process: train, evaluate, report. Every outcome ends with one final message."""
    spec = JobSpec(**{**spec_data, "dataset": Path(spec_data["dataset"]), "out": Path(spec_data["out"]),
                      "compare_with": Path(spec_data["compare_with"]) if spec_data.get("compare_with") else None})

    def send(kind: str, payload) -> None:
        out_queue.put((kind, payload))

    try:
        import torch

        from core.allocator import keep_freed_memory

        keep_freed_memory()  # a spawned interpreter: the parent's allocator setting does not carry over
        if spec.threads:
            torch.set_num_threads(spec.threads)
        from core.data.dataset import open_dataset
        from core.training.api import TrainingCancelled, TrainOptions, trainer_for

        send("log", f"opening dataset {spec.dataset}")
        dataset = open_dataset(spec.dataset, require_test=spec.evaluate)
        counts = dataset.counts("train")
        send("log", f"train split: {counts['good']} good, {counts['defect']} defect "
                    f"({counts['segmented']} with masks)")
        train = trainer_for(spec.family)
        options = TrainOptions(out=spec.out, supervision=spec.supervision, backbone=spec.backbone, epochs=spec.epochs,
                               device=spec.device, seed=spec.seed, extra=dict(spec.extra), cancel=cancel_event)
        # Training covers 0..0.9 of the bar when an evaluation follows, so the bar never jumps back.
        share = 0.9 if spec.evaluate else 1.0
        last_sent = [0.0, ""]

        def progress(event: ProgressEvent) -> None:
            now = time.monotonic()
            # Throttle: at most ~10 messages/s, but always stage changes and the end.
            if event.stage == last_sent[1] and now - last_sent[0] < 0.1 and event.fraction < 1.0:
                return
            last_sent[0], last_sent[1] = now, event.stage
            scaled = asdict(event)
            scaled["fraction"] = float(event.fraction) * share
            send("progress", scaled)

        send("progress", asdict(ProgressEvent("start", 0.0, f"training {spec.family} ({spec.supervision})")))
        path = Path(train(dataset, options, progress))
        options.check_cancel()
        if spec.evaluate:
            send("progress", asdict(ProgressEvent("evaluate", share, "evaluating on the held-back images")))
            figures = _evaluate(path, dataset, spec.device)
            send("log", "evaluation: " + _brief(figures))
            if spec.compare_with is not None:
                options.check_cancel()
                send("progress", asdict(ProgressEvent("compare", 0.95, "evaluating the active model on the same images")))
                try:
                    from core.evaluation import evaluate
                    from core.inference.detector import Detector

                    other = _json_safe(evaluate(Detector.load(spec.compare_with, device=spec.device), dataset))
                    send("log", f"active model on the same images: {_brief(other)}")
                    send("compare", other)
                except Exception as exc:  # the new model is fine; only the comparison is missing
                    send("log", f"the active model could not be evaluated for comparison: {exc}")
        send("progress", asdict(ProgressEvent("done", 1.0, f"model package written to {path}", 0.0)))
        send("done", str(path))
    except TrainingCancelled as exc:
        send("cancelled", str(exc))
    except Exception as exc:  # reported to the user in plain words; the traceback goes to the log
        send("log", traceback.format_exc())
        send("error", f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))


def _evaluate(package_dir: Path, dataset, device: str) -> dict:
    """Evaluate the new package on the dataset's test split and record the figures in its model.json."""
    from core.evaluation import evaluate
    from core.inference.detector import Detector
    from core.inference.package import read_meta, write_meta

    detector = Detector.load(package_dir, device=device)
    figures = evaluate(detector, dataset)
    meta = read_meta(package_dir)
    meta["evaluation"] = {**meta.get("evaluation", {}), **_json_safe(figures)}
    write_meta(package_dir, meta)
    return figures


def _brief(figures: dict) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in figures.items() if isinstance(v, float))


def _json_safe(figures: dict) -> dict:
    out = {}
    for key, value in figures.items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            out[key] = value
        elif hasattr(value, "item"):
            out[key] = value.item()
        elif isinstance(value, dict):
            out[key] = _json_safe(value)
    return out
