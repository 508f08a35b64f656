"""Software trigger against TLSimu, the EMVA simulated GenTL producer (TLSimu.cti + libVirtualFG.so).

TLSimu ships only in the ``genicam==1.5.0`` wheel (the station runs genicam 1.6, which dropped it). The
test setup fetches that wheel from PyPI with pip (``pip download``, no install), extracts the two
binaries into a cache directory OUTSIDE the repository, and loads them through harvesters like any
producer. The producer is plain C++ (no Python ABI), so the cp311 manylinux wheel serves any Python.
Set INSPECTOR_TLSIMU_DIR to a folder already holding both files to work offline. Skipped, with the
reason, when neither is possible.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.acquisition import GenICamSource, SourceState, list_devices, open_source

FILES = ("TLSimu.cti", "libVirtualFG.so")


def _cache_dir() -> Path:
    if os.environ.get("INSPECTOR_TLSIMU_DIR"):
        return Path(os.environ["INSPECTOR_TLSIMU_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "inspector-station" / "tlsimu-genicam-1.5.0"


def _fetch_tlsimu(target: Path) -> str | None:
    """Download genicam==1.5.0 and extract TLSimu into ``target``; returns why not, or None on success."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"TLSimu binaries exist for Linux x86_64 only (this is {sys.platform}/{platform.machine()})"
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "genicam==1.5.0", "--no-deps", "--only-binary=:all:",
                   "--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp",
                   "--quiet", "--disable-pip-version-check", "-d", tmp]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"pip download genicam==1.5.0 failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"pip download genicam==1.5.0 failed (offline?): {tail[0]}"
        wheels = list(Path(tmp).glob("genicam-1.5.0-*.whl"))
        if not wheels:
            return "pip download genicam==1.5.0 produced no wheel"
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tlsimu-"))
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member in wheel.namelist():
                name = member.rsplit("/", 1)[-1]
                if name in FILES and "/genicam/" in member:
                    (staging / name).write_bytes(wheel.read(member))
        if not all((staging / name).is_file() for name in FILES):
            shutil.rmtree(staging, ignore_errors=True)
            return f"the genicam 1.5.0 wheel does not hold {' and '.join(FILES)}"
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-extracted cache is never used
    return None


@pytest.fixture(scope="module")
def tlsimu() -> Path:
    target = _cache_dir()
    if not all((target / name).is_file() for name in FILES):
        if os.environ.get("INSPECTOR_TLSIMU_DIR"):
            pytest.skip(f"INSPECTOR_TLSIMU_DIR={target} does not hold {' and '.join(FILES)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        why = _fetch_tlsimu(target)
        if why:
            pytest.skip(f"TLSimu not available: {why}")
    return target / "TLSimu.cti"


def test_tlsimu_enumerates_mono_and_colour_cameras(tlsimu):
    models = {(d.serial_number, d.model) for d in list_devices([tlsimu])}
    assert ("SN_InterfaceA_0", "TLSimuMono") in models and ("SN_InterfaceA_1", "TLSimuColor") in models


def test_software_trigger_delivers_one_frame_per_trigger(tlsimu):
    source = open_source(f"genicam:{tlsimu}#SN_InterfaceA_0", trigger="software", roi=(0, 0, 128, 96))
    try:
        assert source.feature_report["TriggerMode"] == "set to On"
        assert source.feature_report["TriggerSource"] == "set to Software"
        source.start()
        # no trigger, no frame: a timeout, counted, and (trigger mode) no watchdog reconnect
        assert source.fetch(0.3) is None
        assert source.counters.timeouts == 1 and source.state == SourceState.STREAMING
        frames = []
        for _ in range(3):
            source.trigger()
            frame = source.fetch(2.0)
            assert frame is not None
            frames.append(frame)
        assert [f.sequence for f in frames] == [1, 2, 3]
        assert [f.camera_frame_id for f in frames] == [0, 1, 2]
        assert all(f.image.shape == (96, 128) and f.image.dtype == np.uint8 and f.pixel_format == "Mono8"
                   for f in frames)
        # TLSimu, unlike viky, stamps its buffers
        stamps = [f.camera_timestamp_ns for f in frames]
        assert all(s is not None for s in stamps) and stamps == sorted(stamps)
        assert source.fetch(0.2) is None  # nothing more without a trigger
        time.sleep(0.1)
        assert source.counters.reconnects == 0 and source.counters.frames == 3
    finally:
        source.close()


def test_frame_pixel_format_is_what_the_buffer_holds(tlsimu):
    """TLSimuColor accepts any PixelFormat value but always sends RGB8: the frame must say what arrived."""
    source = GenICamSource([tlsimu], "SN_InterfaceA_1")
    try:
        from core.acquisition import CameraConfig

        report = source.configure(CameraConfig(pixel_format="BayerRG8", roi=(0, 0, 64, 48)))
        assert report["PixelFormat"] == "set to BayerRG8"
        source.start()
        frame = source.fetch(2.0)
        assert frame is not None and frame.pixel_format == "RGB8" and frame.image.shape == (48, 64, 3)
    finally:
        source.close()
