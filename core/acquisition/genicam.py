"""GenICam cameras through harvesters: producer discovery, device listing, and a self-healing FrameSource.

Producers (.cti GenTL libraries) come from, in order: an explicit list (settings / "genicam:/x.cti"),
the GENICAM_GENTL64_PATH convention (folders separated by os.pathsep), and the simulated camera viky.cti
that ships inside the `genicam` wheel (used when nothing else offers a device).

Every buffer is returned to the camera: frames are fetched with ``with acquirer.try_fetch(...) as buffer``
and copied out (converted) inside the ``with`` block. All harvesters calls happen on the thread that
drives the source (harvesters is not thread-safe); state and counters may be read from anywhere.

Waiting for a frame never holds the GIL for long. harvesters waits inside GenTL's EventGetData, a call
that keeps the GIL (genicam/harvesters#508), so a blocking ``fetch`` starved every other Python thread:
on 2 cores, inference ran 5-7x slower beside a 200 fps camera and any thread waking up (the GUI's
included) waited about 5 ms for the GIL. The source therefore asks GenTL with a zero timeout and sleeps
between polls (``POLL_INTERVAL_S``); sleeping releases the GIL.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core.acquisition.base import Frame, SourceBase, SourceError, SourceState, host_now
from core.acquisition.pixels import PixelFormatError, to_station_image

log = logging.getLogger(__name__)

TRIGGERS = ("free-run", "software", "hardware")
POLL_INTERVAL_S = 0.001  # between zero-timeout polls for a buffer: adds at most this to a frame's latency
_ONE_POLL_S = 1e-5  # try_fetch's own deadline: long enough for its first zero-timeout GenTL call only


# ---------------------------------------------------------------------------------------------------
# producers and devices
# ---------------------------------------------------------------------------------------------------
def simulator_producer() -> Path | None:
    """The simulated camera producer viky.cti shipped in the genicam wheel, or None if absent."""
    spec = importlib.util.find_spec("genicam")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "viky.cti"
    return path if path.is_file() else None


def env_producers(env: str | None = None) -> list[Path]:
    """.cti files named by GENICAM_GENTL64_PATH (folders or files, separated by os.pathsep)."""
    value = os.environ.get("GENICAM_GENTL64_PATH", "") if env is None else env
    found: list[Path] = []
    for part in filter(None, (p.strip() for p in value.split(os.pathsep))):
        path = Path(part)
        if path.is_file() and path.suffix.lower() == ".cti":
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() == ".cti" and p.is_file()))
    return found


def resolve_producers(explicit: Sequence[str | Path] | None = None, *, use_env: bool = True,
                      use_simulator: bool | None = None) -> list[Path]:
    """The producer files to load, without duplicates.

    explicit: .cti files asked for by name; each must exist (SourceError naming it otherwise).
    use_env: add GENICAM_GENTL64_PATH producers (only when no explicit file is given).
    use_simulator: add viky.cti; None = only when nothing else was found.
    """
    files: list[Path] = []
    for item in explicit or ():
        path = Path(item).expanduser()
        if not path.is_file():
            raise SourceError(f"GenTL producer {path} does not exist (expected a .cti file)")
        files.append(path)
    if not files and use_env:
        files.extend(env_producers())
    if use_simulator or (use_simulator is None and not files):
        sim = simulator_producer()
        if sim is not None:
            files.append(sim)
    unique: list[Path] = []
    for path in files:
        if path.resolve() not in [u.resolve() for u in unique]:
            unique.append(path)
    if not unique:
        raise SourceError("no GenTL producer (.cti) found: name one, set GENICAM_GENTL64_PATH, "
                          "or install the genicam wheel (it ships the simulated viky.cti)")
    return unique


@dataclass(frozen=True)
class DeviceDescription:
    """One camera a producer offers. index: position in the Harvester's list."""

    index: int
    id: str
    serial_number: str
    model: str
    vendor: str
    tl_type: str
    display_name: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _describe(index: int, info: Any) -> DeviceDescription:
    def attr(name: str) -> str:
        try:
            value = getattr(info, name)
        except Exception:  # the producer may not support every info field
            return ""
        return "" if value is None else str(value)
    return DeviceDescription(index, attr("id_"), attr("serial_number"), attr("model"), attr("vendor"),
                             attr("tl_type"), attr("display_name"))


def _new_harvester(producers: Sequence[Path]):
    from harvesters.core import Harvester  # imported lazily: heavy, and absent on some dev machines

    harvester = Harvester()
    for path in producers:
        try:
            harvester.add_file(str(path), check_existence=True)
        except Exception as exc:
            harvester.reset()
            raise SourceError(f"cannot load GenTL producer {path}: {exc}") from exc
    harvester.update()
    return harvester


def list_devices(producers: Sequence[str | Path] | None = None) -> list[DeviceDescription]:
    """Enumerate the cameras the producers offer (the simulator's when no producer is configured).

    A producer already opened by a GenICamSource of this process shows no devices here (harvesters
    opens the producer per Harvester); ask that source's devices() instead."""
    harvester = _new_harvester(resolve_producers(producers))
    try:
        return [_describe(i, info) for i, info in enumerate(harvester.device_info_list)]
    finally:
        harvester.reset()


def _pick_device(devices: list[DeviceDescription], device: str | int | None) -> DeviceDescription:
    """By serial number, then device id, then (for a bare integer) index; None = the first device."""
    if not devices:
        raise SourceError("no camera found: the GenTL producer(s) offer no device")
    if device is None or device == "":
        return devices[0]
    key = str(device)
    for candidate in devices:
        if key == candidate.serial_number:
            return candidate
    for candidate in devices:
        if key == candidate.id:
            return candidate
    if isinstance(device, int) or key.isdigit():
        index = int(key)
        if 0 <= index < len(devices):
            return devices[index]
    offered = ", ".join(f"{d.serial_number or '?'} ({d.id})" for d in devices)
    raise SourceError(f"camera {key!r} not found; devices offered: {offered}")


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraConfig:
    """What to set on the camera; None leaves the camera's own value.

    roi: (x, y, width, height). pixel_format: a PFNC name ("Mono8", "BayerRG8", ...) or None/"auto".
    frame_rate: frames/s (AcquisitionFrameRate). exposure_us: ExposureTime in microseconds. gain_db: Gain.
    trigger: "free-run", "software" (TriggerSoftware command via GenICamSource.trigger()) or "hardware".
    trigger_source: the line for hardware triggering.
    num_buffers: buffers announced to the producer (harvesters' default is 3, too few to ride out a busy
        host at 200 frames/s; each costs one frame of memory). None = harvesters' default.
    strict: raise SourceError when a requested feature is missing or refused (else it is reported).
    """

    roi: tuple[int, int, int, int] | None = None
    pixel_format: str | None = None
    frame_rate: float | None = None
    exposure_us: float | None = None
    gain_db: float | None = None
    trigger: str = "free-run"
    trigger_source: str = "Line0"
    num_buffers: int | None = 8
    strict: bool = False

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}, got {self.trigger!r}")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[2:]) <= 0 or min(self.roi[:2]) < 0):
            raise ValueError(f"roi must be (x, y, width, height) with x, y >= 0 and a positive size, got {self.roi}")
        if self.num_buffers is not None and self.num_buffers < 1:
            raise ValueError(f"num_buffers must be >= 1, got {self.num_buffers}")


def _node(node_map: Any, name: str) -> Any | None:
    try:
        return node_map.get_node(name) if node_map.has_node(name) else None
    except Exception:
        return None


def _writable(node: Any) -> bool:
    from genicam import genapi
    try:
        return bool(genapi.is_writable(node))
    except Exception:
        return False


def _set_feature(node_map: Any, names: str | tuple[str, ...], value: Any, report: dict[str, str]) -> bool:
    """Set the first existing of ``names`` to ``value``; record what happened under the first name."""
    names = (names,) if isinstance(names, str) else names
    key = names[0]
    node = next((n for n in (_node(node_map, name) for name in names) if n is not None), None)
    if node is None:
        report[key] = "not available on this camera"
        return False
    if not _writable(node):
        report[key] = "present but not writable now"
        return False
    try:
        symbolics = getattr(node, "symbolics", None)
        if symbolics is not None and not callable(symbolics):
            if str(value) not in symbolics:
                report[key] = f"{value!r} not offered; the camera offers {list(symbolics)}"
                return False
            node.value = str(value)
            report[key] = f"set to {value}"
            return True
        if isinstance(value, bool):
            node.value = value
        elif isinstance(value, int):
            low, high, inc = int(node.min), int(node.max), max(1, int(getattr(node, "inc", 1) or 1))
            fitted = min(max(value, low), high)
            fitted = low + ((fitted - low) // inc) * inc
            node.value = fitted
            report[key] = f"set to {fitted}" + ("" if fitted == value else f" (asked {value}; range {low}..{high} step {inc})")
            return fitted == value
        else:
            low, high = float(node.min), float(node.max)
            fitted = min(max(float(value), low), high)
            node.value = fitted
            report[key] = f"set to {fitted:g}" + ("" if fitted == float(value) else f" (asked {value}; range {low:g}..{high:g})")
            return fitted == float(value)
        report[key] = f"set to {value}"
        return True
    except Exception as exc:  # AccessException, OutOfRangeException ... from GenApi
        report[key] = f"refused: {exc}"
        return False


def apply_config(node_map: Any, config: CameraConfig) -> dict[str, str]:
    """Write ``config`` to a (stopped) camera. Returns {feature: what happened}; raises SourceError in
    strict mode, or when a trigger mode was asked of a camera that has none."""
    report: dict[str, str] = {}
    wanted: list[str] = []
    if config.pixel_format and config.pixel_format != "auto":
        wanted.append("PixelFormat")
        _set_feature(node_map, "PixelFormat", config.pixel_format, report)
    if config.roi is not None:
        x, y, width, height = (int(v) for v in config.roi)
        wanted += ["Width", "Height"] + (["OffsetX"] if x else []) + (["OffsetY"] if y else [])
        for name in ("OffsetX", "OffsetY"):  # offsets first to 0 so any width/height fits
            if _node(node_map, name) is not None:
                _set_feature(node_map, name, 0, {})
        _set_feature(node_map, "Width", width, report)
        _set_feature(node_map, "Height", height, report)
        if x or _node(node_map, "OffsetX") is not None:
            _set_feature(node_map, "OffsetX", x, report)
        if y or _node(node_map, "OffsetY") is not None:
            _set_feature(node_map, "OffsetY", y, report)
    if config.frame_rate is not None:
        wanted.append("AcquisitionFrameRate")
        if _node(node_map, "AcquisitionFrameRateEnable") is not None:
            _set_feature(node_map, "AcquisitionFrameRateEnable", True, {})
        _set_feature(node_map, ("AcquisitionFrameRate", "AcquisitionFrameRateAbs"), float(config.frame_rate), report)
    if config.exposure_us is not None:
        wanted.append("ExposureTime")
        if _node(node_map, "ExposureAuto") is not None:
            _set_feature(node_map, "ExposureAuto", "Off", {})
        _set_feature(node_map, ("ExposureTime", "ExposureTimeAbs"), float(config.exposure_us), report)
    if config.gain_db is not None:
        wanted.append("Gain")
        if _node(node_map, "GainAuto") is not None:
            _set_feature(node_map, "GainAuto", "Off", {})
        _set_feature(node_map, "Gain", float(config.gain_db), report)
    has_trigger = _node(node_map, "TriggerMode") is not None
    if config.trigger == "free-run":
        if has_trigger:
            _set_feature(node_map, "TriggerMode", "Off", report)
    else:
        if not has_trigger:
            raise SourceError(f"{config.trigger} trigger asked for, but the camera has no TriggerMode feature")
        wanted += ["TriggerMode", "TriggerSource"]
        if _node(node_map, "TriggerSelector") is not None:
            _set_feature(node_map, "TriggerSelector", "FrameStart", report)
        _set_feature(node_map, "TriggerMode", "On", report)
        source = "Software" if config.trigger == "software" else config.trigger_source
        _set_feature(node_map, "TriggerSource", source, report)
        if config.trigger == "software" and _node(node_map, "TriggerSoftware") is None:
            raise SourceError("software trigger asked for, but the camera has no TriggerSoftware command")
    failed = {k: v for k, v in report.items() if k in wanted and not v.startswith("set to")}
    for key, what in failed.items():
        log.warning("camera feature %s: %s", key, what)
    if config.strict and failed:
        raise SourceError("camera refused settings: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return report


# ---------------------------------------------------------------------------------------------------
# the source
# ---------------------------------------------------------------------------------------------------
class GenICamSource(SourceBase):
    """A GenICam camera as a FrameSource, with a watchdog that reconnects by itself.

    Watchdog: a fetch that raises anything but a timeout (device unplugged, handle invalid, stream
    closed), or ``stall_timeout_s`` without a frame while free-running, marks the device lost:
    state RECONNECTING, the acquirer is destroyed, and fetch() re-opens the same camera (same serial
    number) with exponential backoff from ``backoff_s[0]`` to ``backoff_s[1]``. After
    ``max_reconnect_attempts`` failures (None = never give up) the state becomes ERROR.
    Incomplete buffers are discarded by harvesters and counted here through its INCOMPLETE_BUFFER event.
    """

    def __init__(self, producers: Sequence[str | Path] | None = None, device: str | int | None = None,
                 config: CameraConfig | None = None, *, stall_timeout_s: float | None = 3.0,
                 backoff_s: tuple[float, float] = (0.1, 5.0), max_reconnect_attempts: int | None = None) -> None:
        self.producers = resolve_producers(producers)
        self._device_key = device
        self.config = config or CameraConfig()
        self.stall_timeout_s = stall_timeout_s
        self.backoff_s = backoff_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self.device: DeviceDescription | None = None
        self.feature_report: dict[str, str] = {}
        self._harvester: Any = None
        self._acquirer: Any = None
        self._devices: list[DeviceDescription] = []
        self._lock = threading.RLock()
        self._want_streaming = False
        self._last_frame_at = 0.0
        self._last_frame_id: int | None = None
        self._attempts = 0
        self._retry_at = 0.0
        super().__init__(camera_id=str(device) if device not in (None, "") else "genicam")
        try:
            self._open()
        except BaseException:
            self.close()  # a Harvester left un-reset keeps the producer busy: the next one would see no device
            raise

    # -- opening and closing ----------------------------------------------------------------------
    def _open(self) -> None:
        """Load producers, find the device, create the acquirer, apply the config (source stays stopped)."""
        if self._harvester is None:
            self._harvester = _new_harvester(self.producers)
        else:
            self._harvester.update()  # re-enumerate: a re-plugged camera may have a new handle
        devices = [_describe(i, info) for i, info in enumerate(self._harvester.device_info_list)]
        key = self._device_key
        if self.device is not None:  # a reconnect: the same camera, by serial number or id
            key = self.device.serial_number or self.device.id
        self._devices = devices
        chosen = _pick_device(devices, key)
        try:
            acquirer = self._harvester.create(chosen.index)
        except Exception as exc:
            raise SourceError(f"cannot open camera {chosen.serial_number or chosen.id}: {exc}") from exc
        try:
            if self.config.num_buffers is not None:
                acquirer.num_buffers = self.config.num_buffers
            self.feature_report = apply_config(acquirer.remote_device.node_map, self.config)
            from harvesters.core import Callback, ImageAcquirer

            source = self

            class _Incomplete(Callback):
                def emit(self, context: object | None = None) -> None:
                    source._count("incomplete")

            acquirer.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, _Incomplete())
            acquirer.timeout_period_on_update_event_data_call = 0  # ms: GenTL returns at once (module docstring)
        except BaseException:
            _destroy_quietly(acquirer)
            raise
        self._acquirer = acquirer
        self.device = chosen
        self.camera_id = chosen.serial_number or chosen.id
        self._last_frame_id = None

    def _release_acquirer(self) -> None:
        acquirer, self._acquirer = self._acquirer, None
        if acquirer is not None:
            _destroy_quietly(acquirer)

    def close(self) -> None:
        """Stop, destroy the acquirer (returns all buffers, closes the device) and reset the Harvester."""
        with self._lock:
            self._want_streaming = False
            self._release_acquirer()
            if self._harvester is not None:
                try:
                    self._harvester.reset()
                except Exception as exc:
                    log.warning("%s: Harvester.reset failed: %s", self.camera_id, exc)
                self._harvester = None
            self._set_state(SourceState.CLOSED)

    # -- streaming --------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self.state == SourceState.CLOSED:
                raise SourceError(f"camera {self.camera_id}: the source is closed")
            self._want_streaming = True
            if self.state == SourceState.STREAMING:
                return
            if self._acquirer is None:
                self._open()
            try:
                self._acquirer.start()
            except Exception as exc:
                self._lost(f"cannot start acquisition: {exc}")
                return
            self._last_frame_at = time.monotonic()
            self._set_state(SourceState.STREAMING)

    def stop(self) -> None:
        with self._lock:
            self._want_streaming = False
            if self._acquirer is not None:
                try:
                    self._acquirer.stop()
                except Exception as exc:  # a lost device may refuse; destroy() will clean up
                    log.warning("%s: stop failed (%s); releasing the device", self.camera_id, exc)
                    self._release_acquirer()
            if self.state not in (SourceState.CLOSED, SourceState.ERROR):
                self._set_state(SourceState.STOPPED)

    def configure(self, config: CameraConfig) -> dict[str, str]:
        """Apply a new configuration: stops, re-applies, restarts if it was streaming. Returns the report."""
        with self._lock:
            was_streaming = self._want_streaming
            self.stop()
            self.config = config
            if self._acquirer is None:
                self._open()
            else:
                if config.num_buffers is not None:
                    self._acquirer.num_buffers = config.num_buffers
                self.feature_report = apply_config(self._acquirer.remote_device.node_map, config)
            if was_streaming:
                self.start()
            return dict(self.feature_report)

    def trigger(self) -> None:
        """Fire one software trigger (config.trigger must be "software")."""
        with self._lock:
            if self.config.trigger != "software":
                raise SourceError(f"camera {self.camera_id}: software trigger needs trigger='software', "
                                  f"not {self.config.trigger!r}")
            if self._acquirer is None:
                raise SourceError(f"camera {self.camera_id}: not connected")
            node = _node(self._acquirer.remote_device.node_map, "TriggerSoftware")
            if node is None:
                raise SourceError(f"camera {self.camera_id} has no TriggerSoftware command")
            node.execute()

    def devices(self) -> list[DeviceDescription]:
        """The cameras the producers offered when this source opened (or last reconnected).

        Use this rather than list_devices() while the source is open: a second Harvester in the same
        process sees no devices of a producer that is already open (viky.cti does exactly that), and
        Harvester.update() on this source's own Harvester would make its acquirer obsolete."""
        return list(self._devices)

    @property
    def acquirer(self) -> Any:
        """The harvesters ImageAcquirer (None while disconnected), for feature browsing. Drive it only from
        the thread that drives this source."""
        return self._acquirer

    @property
    def node_map(self) -> Any:
        return None if self._acquirer is None else self._acquirer.remote_device.node_map

    def fetch(self, timeout_s: float) -> Frame | None:
        timeout_s = max(0.001, float(timeout_s))  # harvesters: timeout 0 would mean "wait forever"
        with self._lock:
            state = self.state
            if state == SourceState.RECONNECTING:
                return self._reconnect_step(timeout_s)
            if state != SourceState.STREAMING or self._acquirer is None:
                time.sleep(min(timeout_s, 0.05))
                return None
            try:
                buffer = self._poll_buffer(timeout_s)
                if buffer is None:
                    self._count("timeouts")
                    stalled = (self.config.trigger == "free-run" and self.stall_timeout_s is not None
                               and time.monotonic() - self._last_frame_at > self.stall_timeout_s)
                    if stalled:
                        self._lost(f"no frame for {self.stall_timeout_s:g} s")
                    return None
                with buffer:
                    frame = self._frame_from(buffer)  # copies out: the buffer is queued back on exit
            except PixelFormatError as exc:
                self._count("errors")
                log.warning("%s: %s", self.camera_id, exc)
                return None
            except Exception as exc:
                self._count("errors")
                self._lost(f"{type(exc).__name__}: {exc}")
                return None
            self._last_frame_at = time.monotonic()
            self._count("frames")
            return frame

    def _poll_buffer(self, timeout_s: float) -> Any | None:
        """The next complete buffer, or None after timeout_s. Polls GenTL with a zero timeout and sleeps
        between polls, so other threads get the GIL (module docstring). Errors other than "no buffer yet"
        (device lost, stream closed) propagate; incomplete buffers are requeued by harvesters."""
        deadline = time.monotonic() + timeout_s
        while True:
            buffer = self._acquirer.try_fetch(timeout=_ONE_POLL_S)
            if buffer is not None or time.monotonic() >= deadline:
                return buffer
            time.sleep(POLL_INTERVAL_S)

    def _frame_from(self, buffer: Any) -> Frame:
        host_time, host_ns = host_now()
        component = buffer.payload.components[0]
        pixel_format = str(component.data_format)
        image = to_station_image(component.data, int(component.width), int(component.height), pixel_format)
        module = buffer.module
        frame_id = _quiet(lambda: int(module.frame_id))
        if frame_id is not None and self._last_frame_id is not None and frame_id > self._last_frame_id + 1:
            self._count("lost", frame_id - self._last_frame_id - 1)
        if frame_id is not None:
            self._last_frame_id = frame_id
        stamp = _quiet(lambda: int(module.timestamp_ns))  # viky: "timestamps not supported" -> None
        return Frame(image=image, camera_id=self.camera_id, sequence=self._next_sequence(),
                     camera_timestamp_ns=stamp or None, host_timestamp=host_time, host_monotonic_ns=host_ns,
                     pixel_format=pixel_format, camera_frame_id=frame_id)

    # -- watchdog ---------------------------------------------------------------------------------
    def _lost(self, reason: str) -> None:
        self._release_acquirer()
        self._attempts = 0
        self._retry_at = time.monotonic() + self.backoff_s[0]
        self._set_state(SourceState.RECONNECTING, f"device lost ({reason})")

    def _reconnect_step(self, timeout_s: float) -> Frame | None:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout_s))
            if wait > timeout_s:
                return None
        self._attempts += 1
        try:
            self._release_acquirer()
            self._open()
            self._acquirer.start()
        except Exception as exc:
            self._release_acquirer()
            if self.max_reconnect_attempts is not None and self._attempts >= self.max_reconnect_attempts:
                self._set_state(SourceState.ERROR, f"gave up after {self._attempts} reconnect attempts: {exc}")
                return None
            delay = min(self.backoff_s[1], self.backoff_s[0] * 2 ** self._attempts)
            self._retry_at = time.monotonic() + delay
            self._set_state(SourceState.RECONNECTING, f"attempt {self._attempts} failed ({exc}); next in {delay:.1f} s")
            return None
        self._count("reconnects")
        self._last_frame_at = time.monotonic()
        self._set_state(SourceState.STREAMING, f"reconnected after {self._attempts} attempt(s)")
        if not self._want_streaming:
            self.stop()
        return None


def _quiet(getter):
    try:
        return getter()
    except Exception:
        return None


def _destroy_quietly(acquirer: Any) -> None:
    """ImageAcquirer.destroy() stops, returns buffers and closes the device; on a lost device it raises
    part-way (InvalidHandle/Closed), so try stop and destroy separately and never let it escape."""
    try:
        acquirer.stop()
    except Exception as exc:
        log.debug("ignored while stopping a lost camera: %s", exc)
    try:
        acquirer.destroy()
        return
    except Exception as exc:
        log.debug("destroy() failed part-way (%s); releasing streams and device one by one", exc)
    # harvesters 1.4 aborts destroy() at the first GenTL error; finish its remaining steps ourselves
    for name in ("_release_data_streams", "_release_remote_device"):
        step = getattr(acquirer, name, None)
        if step is not None:
            try:
                step()
            except Exception as exc:
                log.debug("ignored while releasing a lost camera (%s): %s", name, exc)

