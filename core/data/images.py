"""Reading images and masks from disk with clear errors; converting them to network input.

Convention used across the station: an image is a numpy array (H, W) grey or (H, W, 3) RGB,
dtype uint8 or uint16. A mask is bool (H, W), True = defect.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageError(ValueError):
    """An image or mask file cannot be used; the message names the file and the reason."""


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W) grey or (H, W, 3) RGB, uint8 or uint16 (8 and 16 bit kept as they are)."""
    path = Path(path)
    return as_station_image(_decode(path, "image"), source=str(path))


def _decode(path: Path, what: str) -> np.ndarray:
    """Decode ``path`` with OpenCV (IMREAD_UNCHANGED); ImageError naming the file if it cannot be used.

    PNG and JPEG files are also checked for their end marker: older OpenCV builds decode a truncated
    JPEG into a half-grey picture without complaint, and a half-written file must never pass as an image.
    """
    if not path.is_file():
        raise ImageError(f"{path}: no such {what} file")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from exc
    if data.size == 0:
        raise ImageError(f"{path}: empty {what} file (0 bytes)")
    truncated = _truncation(data)
    if truncated:
        raise ImageError(f"{path}: truncated {what} file ({truncated})")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageError(f"{path}: not a readable {what} (corrupt, truncated or unsupported format)")
    return decoded


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def _truncation(data: np.ndarray) -> str:
    """Why a PNG/JPEG byte buffer is cut short ("" when complete or another format)."""
    head = data[:8].tobytes()
    if head.startswith(_PNG_SIGNATURE):
        # IEND is the last chunk of every complete PNG (trailing bytes after it are tolerated).
        return "" if data.tobytes().rfind(b"IEND") > 8 else "PNG without its IEND chunk"
    if head.startswith(_JPEG_SIGNATURE):
        raw = data.tobytes()
        # The end-of-image marker must follow the last start-of-scan; FF bytes inside scan data are
        # stuffed (FF00), so FFD9 cannot appear there by accident.
        return "" if raw.rfind(b"\xff\xd9") > raw.rfind(b"\xff\xda") else "JPEG without its end-of-image marker"
    return ""


def as_station_image(image: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Bring a decoded OpenCV array (grey, BGR or BGRA; uint8/uint16) into the station convention."""
    if image.dtype not in (np.uint8, np.uint16):
        if image.dtype == np.float32 or image.dtype == np.float64:
            image = np.clip(image, 0.0, 1.0)
            image = (image * 255.0 + 0.5).astype(np.uint8)
        else:
            raise ImageError(f"{source}: unsupported pixel type {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        else:
            raise ImageError(f"{source}: {image.shape[2]} channels; expected 1, 3 or 4")
    elif image.ndim != 2:
        raise ImageError(f"{source}: expected a 2-D or 3-D array, got shape {image.shape}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ImageError(f"{source}: image of {image.shape[1]}x{image.shape[0]} pixels is too small")
    return np.ascontiguousarray(image)


def read_mask(path: str | Path, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a mask file as bool (H, W), True = defect. Checks its size against the image's.

    Grey masks: pixel > 0 is defect (8 or 16 bit). Colour masks: any colour channel > 0; with an alpha
    channel, a pixel must also be non-transparent (so a fully opaque white-on-black PNG and a painted
    overlay with transparent background both read as drawn).
    """
    path = Path(path)
    raw = _decode(path, "mask")
    if raw.ndim == 2:
        mask = raw > 0
    elif raw.ndim == 3 and raw.shape[2] in (1, 3):
        mask = raw.max(axis=2) > 0
    elif raw.ndim == 3 and raw.shape[2] == 4:
        mask = (raw[:, :, :3].max(axis=2) > 0) & (raw[:, :, 3] > 0)
    else:
        raise ImageError(f"{path}: mask of shape {raw.shape}; expected 1, 3 or 4 channels")
    if expected_shape is not None and tuple(mask.shape) != tuple(expected_shape[:2]):
        raise ImageError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                         f"{expected_shape[1]}x{expected_shape[0]} (width x height)")
    return mask


def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8/uint16 -> (H, W, 3) float32 in 0..1."""
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    out = image.astype(np.float32) / scale
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return out


def resize_rgb_float(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Station image -> (H, W, 3) float32 in 0..1 at ``size`` (H, W), area-resampled.

    The one resizing every model sees, in training and at inference alike."""
    height, width = size
    return to_rgb_float(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))


def to_grey_u8(image: np.ndarray) -> np.ndarray:
    """Any station image -> (H, W) uint8, for display and thumbnails."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


def encode_png(image: np.ndarray) -> bytes:
    """Encode a station image (grey or RGB, 8/16 bit) as PNG bytes, lossless."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ImageError("PNG encoding failed")
    return buf.tobytes()
