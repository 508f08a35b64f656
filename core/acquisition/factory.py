"""open_source(spec, **options): one string names a frame source, as on the command line and in settings.

    synthetic                      simulated textured parts with planted defects
    folder:DIR                     replay DIR's images (options: rate_hz, loop, recursive)
    genicam                        first camera of GENICAM_GENTL64_PATH's producers (else the simulator)
    genicam:/path/x.cti            first camera of that producer
    genicam:/path/x.cti#SERIAL     that camera (serial number, device id, or index)
    genicam#SERIAL, genicam:#SERIAL  that camera, producers as for plain "genicam"
"""
from __future__ import annotations

import inspect
from typing import Any

from core.acquisition.base import FrameSource, SourceError
from core.acquisition.folder import FolderSource
from core.acquisition.genicam import CameraConfig, GenICamSource
from core.acquisition.synthetic import SyntheticSource

_CAMERA_KEYS = {name for name in inspect.signature(CameraConfig).parameters}
_GENICAM_KEYS = {"producers", "device", "config", "stall_timeout_s", "backoff_s", "max_reconnect_attempts"}


def _check(kind: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise SourceError(f"{kind} source: unknown option(s) {sorted(unknown)}; accepted: {sorted(allowed)}")


def open_source(spec: str, **options: Any) -> FrameSource:
    """Build the source ``spec`` names (see the module docstring). The source is opened, not started.

    Options: folder: rate_hz (alias frame_rate), loop, recursive. synthetic: size, rate_hz (alias
    frame_rate), defect_fraction, pool, seed, count. genicam: producers, device, config (CameraConfig) or
    its fields (roi, pixel_format, frame_rate, exposure_us, gain_db, trigger, trigger_source, num_buffers,
    strict), stall_timeout_s, backoff_s, max_reconnect_attempts. Raises SourceError naming the problem.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError("source: empty; use synthetic, folder:DIR or genicam[:CTI[#SERIAL]]")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if spec.startswith("genicam#"):  # "genicam#SERIAL": default producers, that camera
        kind, rest = "genicam", spec[len("genicam"):]
    if "frame_rate" in options and kind in ("folder", "synthetic"):
        options.setdefault("rate_hz", options.pop("frame_rate"))
    if kind == "synthetic":
        _check("synthetic", options, {"size", "rate_hz", "defect_fraction", "pool", "seed", "count"})
        return SyntheticSource(**options)
    if kind == "folder":
        if not rest.strip():
            raise SourceError("source: 'folder:' needs a folder, e.g. folder:/data/images")
        _check("folder", options, {"rate_hz", "loop", "recursive"})
        return FolderSource(rest.strip(), **options)
    if kind == "genicam":
        _check("genicam", options, _GENICAM_KEYS | _CAMERA_KEYS)
        cti, _, serial = rest.partition("#")
        producers = options.pop("producers", None)
        if cti.strip():
            producers = [cti.strip()]
        device = options.pop("device", None)
        if serial.strip():
            device = serial.strip()
        camera = {k: options.pop(k) for k in list(options) if k in _CAMERA_KEYS}
        config = options.pop("config", None)
        if config is None:
            if isinstance(camera.get("roi"), list):
                camera["roi"] = tuple(camera["roi"])
            if camera.get("pixel_format") == "auto":
                camera["pixel_format"] = None
            try:
                config = CameraConfig(**camera)
            except (TypeError, ValueError) as exc:
                raise SourceError(f"genicam source: {exc}") from exc
        elif camera:
            raise SourceError(f"genicam source: give either config or its fields, not both ({sorted(camera)})")
        return GenICamSource(producers, device or None, config, **options)
    raise SourceError(f"source {spec!r}: unknown kind {kind!r}; use synthetic, folder:DIR or genicam[:CTI[#SERIAL]]")


def source_from_settings(camera: Any) -> FrameSource:
    """A source from core.settings.CameraSettings (source, producer, device, roi, pixel_format, ...)."""
    spec = camera.source
    if spec.startswith("genicam"):
        options: dict[str, Any] = {
            "pixel_format": camera.pixel_format, "trigger": camera.trigger, "frame_rate": camera.frame_rate,
            "exposure_us": camera.exposure_us, "gain_db": camera.gain_db,
            "roi": tuple(camera.roi) if camera.roi else None,
        }
        if spec == "genicam" and camera.producer:
            options["producers"] = [camera.producer]
        if camera.device and "#" not in spec:
            options["device"] = camera.device
        return open_source(spec, **options)
    if spec.startswith("folder:"):
        return open_source(spec, rate_hz=camera.frame_rate, loop=True)
    return open_source(spec, rate_hz=camera.frame_rate)
