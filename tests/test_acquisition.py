"""Frame sources: pixel conversion, the real GenTL producer viky.cti (simulated camera), folder replay,
the synthetic camera and open_source parsing. No mocks: viky.cti is a real producer loaded by harvesters."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.acquisition import (CameraConfig, FolderSource, GenICamSource, PixelFormatError, SourceError,
                              SourceState, SyntheticSource, list_devices, open_source, resolve_producers,
                              simulator_producer, to_station_image)
from core.acquisition.genicam import env_producers

VIKY = simulator_producer()
needs_viky = pytest.mark.skipif(VIKY is None, reason="the genicam wheel's simulated producer viky.cti is not installed")


# ---------------------------------------------------------------------------------------------------
# pixel formats
# ---------------------------------------------------------------------------------------------------
def _mosaic(pattern: str, rgb: np.ndarray) -> np.ndarray:
    """Bayer mosaic (H, W) of an RGB image; pattern = colours of the 2x2 cell in reading order, e.g. 'RGGB'."""
    channel = {"R": 0, "G": 1, "B": 2}
    mosaic = np.zeros(rgb.shape[:2], rgb.dtype)
    for index, colour in enumerate(pattern):
        dy, dx = divmod(index, 2)
        mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, channel[colour]]
    return mosaic


@pytest.mark.parametrize("pfnc,pattern", [("BayerRG8", "RGGB"), ("BayerGR8", "GRBG"),
                                          ("BayerGB8", "GBRG"), ("BayerBG8", "BGGR")])
def test_bayer_patterns_demosaic_to_the_right_colour(pfnc, pattern):
    for colour in range(3):  # a flat red, then green, then blue field must come back as that colour
        rgb = np.zeros((16, 20, 3), np.uint8)
        rgb[..., colour] = 200
        out = to_station_image(_mosaic(pattern, rgb).ravel(), 20, 16, pfnc)
        assert out.shape == (16, 20, 3) and out.dtype == np.uint8
        centre = out[4:12, 4:16].reshape(-1, 3).mean(axis=0)
        assert centre[colour] > 190 and np.delete(centre, colour).max() < 10, (pfnc, colour, centre)


def test_packed_colour_and_mono_formats():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    assert np.array_equal(to_station_image(rgb.ravel(), 10, 12, "RGB8"), rgb)
    assert np.array_equal(to_station_image(rgb[..., ::-1].ravel(), 10, 12, "BGR8"), rgb)
    rgba = np.dstack([rgb, np.full((12, 10), 255, np.uint8)])
    assert np.array_equal(to_station_image(rgba.ravel(), 10, 12, "RGBa8"), rgb)
    bgra = np.dstack([rgb[..., ::-1], np.full((12, 10), 255, np.uint8)])
    assert np.array_equal(to_station_image(bgra.ravel(), 10, 12, "BGRa8"), rgb)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    assert np.array_equal(to_station_image(grey.ravel(), 10, 12, "Mono8"), grey)
    deep = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    out16 = to_station_image(deep.ravel(), 10, 12, "Mono16")
    assert out16.dtype == np.uint16 and np.array_equal(out16, deep)
    # raw little-endian bytes, as a GenTL buffer holds them
    assert np.array_equal(to_station_image(deep.astype("<u2").view(np.uint8), 10, 12, "Mono16"), deep)


def test_conversion_copies_out_of_the_buffer_and_strips_row_padding():
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    padded = np.zeros((12, 16), np.uint8)
    padded[:, :10] = grey
    buffer = padded.ravel()
    out = to_station_image(buffer, 10, 12, "Mono8")
    assert np.array_equal(out, grey)
    assert not np.shares_memory(out, buffer)  # the camera may overwrite its buffer right after
    plain = grey.ravel()
    assert not np.shares_memory(to_station_image(plain, 10, 12, "Mono8"), plain)
    rgb = np.zeros(12 * 10 * 3, np.uint8)
    assert not np.shares_memory(to_station_image(rgb, 10, 12, "RGB8"), rgb)


def test_conversion_errors_name_the_problem():
    with pytest.raises(PixelFormatError, match="Mono12Packed.*not supported"):
        to_station_image(np.zeros(100, np.uint8), 10, 10, "Mono12Packed")
    with pytest.raises(PixelFormatError, match="incomplete"):
        to_station_image(np.zeros(99, np.uint8), 10, 10, "Mono8")


# ---------------------------------------------------------------------------------------------------
# GenICam through harvesters, against the simulated producer viky.cti
# ---------------------------------------------------------------------------------------------------
@needs_viky
def test_enumerate_viky_devices(monkeypatch):
    devices = list_devices([VIKY])
    assert [d.serial_number for d in devices] == ["0", "1", "2"]
    assert all(d.model == "Viky" and d.id.startswith("VikyTL_DEV_") for d in devices)
    monkeypatch.setenv("GENICAM_GENTL64_PATH", "")
    assert list_devices() == devices  # no producer configured: falls back to the simulator
    source = GenICamSource([VIKY], "VikyTL_DEV_blue")  # by device id as well as by serial number
    try:
        assert source.camera_id == "2"
        assert source.devices() == devices  # while open, the source is the one to ask
    finally:
        source.close()


@needs_viky
def test_stream_with_roi_and_pixel_format_then_reconfigure_stop_and_reopen():
    source = open_source(f"genicam:{VIKY}#1", roi=(0, 0, 320, 240), pixel_format="Mono8", frame_rate=100)
    try:
        assert source.camera_id == "1" and source.state == SourceState.STOPPED
        assert source.feature_report["Width"] == "set to 320" and source.feature_report["PixelFormat"] == "set to Mono8"
        source.start()
        assert source.state == SourceState.STREAMING
        frames = [f for f in (source.fetch(2.0) for _ in range(5)) if f is not None]
        assert len(frames) == 5
        assert all(f.image.shape == (240, 320) and f.image.dtype == np.uint8 for f in frames)
        assert [f.sequence for f in frames] == [1, 2, 3, 4, 5]
        assert frames[0].pixel_format == "Mono8" and frames[0].camera_id == "1"
        assert frames[0].host_timestamp.tzinfo is not None
        assert frames[-1].host_monotonic_ns > frames[0].host_monotonic_ns
        assert frames[0].camera_timestamp_ns is None  # viky: "timestamps not supported by the device"
        # reconfigure while streaming: stops, applies, restarts
        report = source.configure(CameraConfig(roi=(0, 0, 200, 100), pixel_format="RGBa8", frame_rate=100))
        assert report["PixelFormat"] == "set to RGBa8" and source.state == SourceState.STREAMING
        frame = source.fetch(2.0)
        assert frame is not None and frame.image.shape == (100, 200, 3) and frame.pixel_format == "RGBa8"
        assert frame.sequence == 6  # the source's own counter carries on
        source.stop()
        assert source.state == SourceState.STOPPED
        assert source.fetch(0.05) is None
        source.start()
        assert source.fetch(2.0) is not None
    finally:
        source.close()
    assert source.state == SourceState.CLOSED and source.acquirer is None
    # closing released the device: it opens again
    again = GenICamSource([VIKY], "1")
    try:
        again.start()
        assert again.fetch(2.0) is not None
    finally:
        again.close()


@needs_viky
def test_fetch_timeout_is_counted_and_bounded():
    source = open_source(f"genicam:{VIKY}", frame_rate=1.0, pixel_format="Mono8")
    try:
        source.start()
        source.fetch(2.0)  # the first frame; the next is 1 s away
        start = time.monotonic()
        assert source.fetch(0.1) is None
        assert time.monotonic() - start < 0.6
        assert source.counters.timeouts == 1 and source.state == SourceState.STREAMING
    finally:
        source.close()


@needs_viky
def test_waiting_for_a_frame_leaves_the_gil_to_other_threads():
    """harvesters waits for a buffer inside a GenTL call that keeps the GIL (genicam/harvesters#508): a
    thread waking up beside it waited a whole switch interval for the GIL (inference 5-7x slower, the GUI
    sluggish). With the switch interval raised to 50 ms that wait is 50 ms; polling leaves it near zero."""
    source = open_source(f"genicam:{VIKY}", frame_rate=1.0, pixel_format="Mono8")  # mostly waiting
    done = threading.Event()
    fetches: list[bool] = []

    def acquire() -> None:
        while not done.is_set():
            fetches.append(source.fetch(0.5) is not None)

    previous = sys.getswitchinterval()
    worker = threading.Thread(target=acquire, daemon=True)
    try:
        source.start()
        worker.start()
        time.sleep(0.3)
        sys.setswitchinterval(0.05)
        late_ms = []
        for _ in range(40):
            start = time.perf_counter()
            time.sleep(0.002)  # releases the GIL; waking up needs it back
            late_ms.append((time.perf_counter() - start - 0.002) * 1000)
        waited = len(fetches)
    finally:
        sys.setswitchinterval(previous)
        done.set()
        worker.join(5)
        source.close()
    assert not worker.is_alive()
    assert len(fetches) > waited, "the acquisition thread was not waiting in fetch() while we measured"
    assert float(np.median(late_ms)) < 10.0, f"woke {np.median(late_ms):.1f} ms late (median of 40)"


@needs_viky
def test_missing_features_are_reported_and_strict_mode_refuses():
    source = open_source(f"genicam:{VIKY}", exposure_us=5000.0, gain_db=3.0, pixel_format="Mono8")
    try:
        assert source.feature_report["ExposureTime"] == "not available on this camera"
        assert source.feature_report["Gain"] == "not available on this camera"
        assert source.feature_report["PixelFormat"] == "set to Mono8"
    finally:
        source.close()
    with pytest.raises(SourceError, match="ExposureTime: not available"):
        open_source(f"genicam:{VIKY}", exposure_us=5000.0, strict=True)
    with pytest.raises(SourceError, match="no TriggerMode"):
        open_source(f"genicam:{VIKY}", trigger="software")
    source = open_source(f"genicam:{VIKY}", pixel_format="BayerRG8")  # viky offers RGBa8 and Mono8 only
    try:
        assert "not offered" in source.feature_report["PixelFormat"] and "Mono8" in source.feature_report["PixelFormat"]
    finally:
        source.close()


@needs_viky
def test_device_closed_under_the_running_source_reconnects_within_two_seconds():
    source = open_source(f"genicam:{VIKY}#0", pixel_format="Mono8", frame_rate=100, backoff_s=(0.1, 1.0))
    seen: list[SourceState] = []
    source.add_state_listener(lambda status: seen.append(status.state))
    try:
        source.start()
        assert source.fetch(2.0) is not None
        # pull the plug from another thread while this one is fetching, as a real unplug would
        killer = threading.Timer(0.2, lambda: source.acquirer.device.module.close())
        killer.start()
        lost_at = None
        recovered_at = None
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            frame = source.fetch(0.2)
            if lost_at is None and source.state == SourceState.RECONNECTING:
                lost_at = time.monotonic()
            if lost_at is not None and frame is not None:
                recovered_at = time.monotonic()
                break
        killer.join()
        assert lost_at is not None, "the closed device was not detected"
        assert recovered_at is not None and recovered_at - lost_at < 2.0
        counters = source.counters
        assert counters.reconnects == 1 and counters.errors >= 1
        assert SourceState.RECONNECTING in seen and seen[-1] == SourceState.STREAMING
        assert "reconnected" in source.status.reason
    finally:
        source.close()


@needs_viky
def test_a_camera_that_does_not_come_back_ends_in_error():
    source = GenICamSource([VIKY], "2", CameraConfig(pixel_format="Mono8"), backoff_s=(0.05, 0.1),
                           max_reconnect_attempts=2)
    try:
        source.start()
        assert source.fetch(2.0) is not None
        # the camera that comes back is not ours: forget the open one and ask for a serial nobody has
        source.device, source._device_key = None, "no-such-serial"
        source.acquirer.device.module.close()
        deadline = time.monotonic() + 3.0
        while source.state != SourceState.ERROR and time.monotonic() < deadline:
            source.fetch(0.1)
        assert source.state == SourceState.ERROR
        assert "gave up after 2" in source.status.reason and "no-such-serial" in source.status.reason
    finally:
        source.close()


@needs_viky
def test_start_stop_close_leaks_no_buffers_or_threads():
    before = threading.active_count()
    for _ in range(3):
        # 3 buffers only: a buffer not handed back would stall the stream within 3 frames
        source = open_source(f"genicam:{VIKY}", pixel_format="Mono8", num_buffers=3, frame_rate=200)
        for _ in range(2):
            source.start()
            frames = [source.fetch(2.0) for _ in range(12)]
            assert all(f is not None for f in frames)
            source.stop()
        source.close()
    time.sleep(0.2)
    assert threading.active_count() <= before


@needs_viky
def test_producers_from_the_gentl_path_convention(tmp_path, monkeypatch):
    (tmp_path / "viky.cti").symlink_to(VIKY)
    monkeypatch.setenv("GENICAM_GENTL64_PATH", f"{tmp_path / 'missing'}:{tmp_path}")
    assert env_producers() == [tmp_path / "viky.cti"]
    assert resolve_producers() == [tmp_path / "viky.cti"]  # the simulator is not added twice
    monkeypatch.setenv("GENICAM_GENTL64_PATH", "")
    assert resolve_producers() == [VIKY]


def test_open_source_rejects_bad_specs_with_clear_messages(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"genicam:{tmp_path / 'nope.cti'}")
    with pytest.raises(SourceError, match="unknown kind 'webcam'"):
        open_source("webcam")
    with pytest.raises(SourceError, match="needs a folder"):
        open_source("folder:")
    with pytest.raises(SourceError, match="not a folder"):
        open_source(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(SourceError, match="unknown option"):
        open_source("synthetic", colour="red")
    with pytest.raises(SourceError, match="trigger must be one of"):
        open_source("genicam", trigger="sometimes")


@needs_viky
def test_unknown_serial_lists_the_cameras_offered():
    with pytest.raises(SourceError, match=r"camera '9' not found; devices offered: 0 \(VikyTL_DEV_red\)"):
        open_source(f"genicam:{VIKY}#9")


# ---------------------------------------------------------------------------------------------------
# folder replay and the synthetic camera
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(4):
        cv2.imwrite(str(folder / f"img_{index}.png"), rng.integers(0, 256, (32, 48), dtype=np.uint8))
    cv2.imwrite(str(folder / "img_4_colour16.png"), rng.integers(0, 65536, (32, 48, 3), dtype=np.uint16))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_replays_in_order_then_finishes(image_folder):
    source = FolderSource(image_folder)
    source.start()
    frames = [source.fetch(1.0) for _ in range(5)]
    assert [Path(f.origin).name for f in frames] == ["img_0.png", "img_1.png", "img_2.png", "img_3.png",
                                                      "img_4_colour16.png"]
    assert frames[0].image.shape == (32, 48) and frames[0].image.dtype == np.uint8
    assert frames[4].image.shape == (32, 48, 3) and frames[4].image.dtype == np.uint16
    assert source.fetch(0.1) is None and source.state == SourceState.FINISHED
    assert source.counters.frames == 5
    source.close()


def test_folder_loops_at_a_set_rate(image_folder):
    source = open_source(f"folder:{image_folder}", rate_hz=50, loop=True)
    source.start()
    start = time.monotonic()
    frames = [f for f in (source.fetch(1.0) for _ in range(12)) if f is not None]
    elapsed = time.monotonic() - start
    assert len(frames) == 12 and [f.sequence for f in frames] == list(range(1, 13))
    assert Path(frames[5].origin).name == "img_0.png"  # wrapped around after 5 images
    assert 0.18 <= elapsed < 2.0  # 11 periods of 20 ms at least
    assert source.fetch(0.001) is None and source.counters.timeouts == 1  # next frame not due yet
    source.close()


def test_folder_skips_unreadable_files_and_counts_them(image_folder):
    (image_folder / "img_2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    source = FolderSource(image_folder)
    source.start()
    names = []
    while (frame := source.fetch(0.5)) is not None:
        names.append(Path(frame.origin).name)
    assert "img_2.png" not in names and len(names) == 4
    assert source.counters.errors == 1


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="holds no images"):
        FolderSource(tmp_path)


def test_synthetic_source_paces_and_counts():
    source = SyntheticSource(size=(64, 80), rate_hz=100, pool=8, defect_fraction=0.5, count=10)
    source.start()
    start = time.monotonic()
    frames = []
    while (frame := source.fetch(1.0)) is not None:
        frames.append(frame)
    assert len(frames) == 10 and source.state == SourceState.FINISHED
    assert time.monotonic() - start >= 0.08
    assert frames[0].image.shape == (64, 80)
    assert sum(source.defective(f.sequence) for f in frames) > 0
    # frames own their pixels: modifying one does not change the pool
    frames[0].image[:] = 0
    assert source._images[int(source._order[0])].any()


def test_source_from_settings(tmp_path, image_folder):
    from core.acquisition import source_from_settings
    from core.settings import CameraSettings

    source = source_from_settings(CameraSettings(source=f"folder:{image_folder}", frame_rate=20.0))
    assert isinstance(source, FolderSource) and source.loop and source.live
    source.close()
    source = source_from_settings(CameraSettings(source="synthetic", frame_rate=5.0))
    assert isinstance(source, SyntheticSource)
    source.close()
    if VIKY is not None:
        camera = source_from_settings(CameraSettings(source=f"genicam:{VIKY}", device="2", pixel_format="Mono8",
                                                     roi=[0, 0, 256, 128], frame_rate=50.0))
        try:
            assert camera.camera_id == "2" and camera.feature_report["Width"] == "set to 256"
            camera.start()
            frame = camera.fetch(2.0)
            assert frame is not None and frame.image.shape == (128, 256)
        finally:
            camera.close()


@needs_viky
def test_frames_the_camera_numbered_but_never_delivered_are_counted_lost():
    # 3 buffers at 200 frames/s, collected every 50 ms: the producer must skip frames, and its frame ids show it
    source = open_source(f"genicam:{VIKY}", pixel_format="Mono8", num_buffers=3, frame_rate=200)
    try:
        source.start()
        frames = []
        for _ in range(8):
            time.sleep(0.05)
            frames.append(source.fetch(2.0))
        ids = [f.camera_frame_id for f in frames]
        gaps = sum(b - a - 1 for a, b in zip(ids, ids[1:]))
        assert gaps > 0 and source.counters.lost == gaps
    finally:
        source.close()


@needs_viky
def test_a_stalled_free_running_camera_is_treated_as_lost():
    # free-running at 3 frames/s with a 0.2 s stall limit: the silence after a frame trips the watchdog
    source = open_source(f"genicam:{VIKY}", pixel_format="Mono8", frame_rate=3.0, stall_timeout_s=0.2,
                         backoff_s=(0.05, 0.1))
    try:
        source.start()
        assert source.fetch(2.0) is not None
        deadline = time.monotonic() + 3.0
        while source.counters.reconnects == 0 and time.monotonic() < deadline:
            source.fetch(0.1)
        assert source.counters.reconnects >= 1 and source.counters.timeouts >= 2
        assert source.state == SourceState.STREAMING
    finally:
        source.close()
