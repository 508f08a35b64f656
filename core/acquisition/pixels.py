"""Camera pixel formats (GenICam PFNC names) -> station images, always as a fresh array.

Station convention: (H, W) grey or (H, W, 3) RGB, uint8 or uint16 (see core/data/images.py).
The input is the flat pixel data of one buffer; the output never shares memory with it, so the
buffer can go back to the camera right after the call.
"""
from __future__ import annotations

import cv2
import numpy as np

# GenICam names Bayer patterns by the first two pixels of the first row; OpenCV's explicit
# 4-letter aliases (COLOR_BayerRGGB2RGB ...) mean the same. (OpenCV's 2-letter names are shifted
# by one row and column: BayerRG8 is COLOR_BayerBG2RGB, a classic source of swapped red/blue.)
_BAYER = {
    "BayerRG8": "COLOR_BayerRGGB2RGB",
    "BayerGR8": "COLOR_BayerGRBG2RGB",
    "BayerGB8": "COLOR_BayerGBRG2RGB",
    "BayerBG8": "COLOR_BayerBGGR2RGB",
}
_BAYER_FALLBACK = {  # OpenCV builds before the 4-letter aliases
    "BayerRG8": "COLOR_BayerBG2RGB",
    "BayerGR8": "COLOR_BayerGB2RGB",
    "BayerGB8": "COLOR_BayerGR2RGB",
    "BayerBG8": "COLOR_BayerRG2RGB",
}
_CHANNELS = {"Mono8": 1, "Mono16": 1, "RGB8": 3, "BGR8": 3, "RGBa8": 4, "BGRa8": 4,
             **{name: 1 for name in _BAYER}}

SUPPORTED_PIXEL_FORMATS: tuple[str, ...] = tuple(_CHANNELS)


class PixelFormatError(ValueError):
    """The data cannot be converted; the message names the format and the problem."""


def _bayer_code(pixel_format: str) -> int:
    code = getattr(cv2, _BAYER[pixel_format], None)
    if code is None:
        code = getattr(cv2, _BAYER_FALLBACK[pixel_format])
    return int(code)


def to_station_image(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """Flat pixel data of one buffer -> a new station image.

    data: 1-D (or any shape) array holding at least height rows of pixels; uint8 for 8-bit formats,
        uint16 (or raw uint8 bytes, little endian) for Mono16. Rows may carry trailing padding bytes.
    Returns (height, width) grey or (height, width, 3) RGB; uint8, or uint16 for Mono16.
    """
    if pixel_format not in _CHANNELS:
        raise PixelFormatError(f"pixel format {pixel_format!r} is not supported; supported: "
                               f"{', '.join(SUPPORTED_PIXEL_FORMATS)}")
    if width <= 0 or height <= 0:
        raise PixelFormatError(f"{pixel_format}: bad image size {width}x{height}")
    channels = _CHANNELS[pixel_format]
    flat = np.asarray(data).reshape(-1)
    if pixel_format == "Mono16" and flat.dtype == np.uint8:
        if flat.size % 2:
            raise PixelFormatError(f"Mono16: odd number of bytes ({flat.size})")
        flat = flat.view("<u2")
    elif pixel_format != "Mono16" and flat.dtype != np.uint8:
        raise PixelFormatError(f"{pixel_format}: expected 8-bit data, got {flat.dtype}")
    row = width * channels
    if flat.size < row * height:
        raise PixelFormatError(f"{pixel_format}: buffer holds {flat.size} values, a {width}x{height} image "
                               f"needs {row * height} (incomplete buffer?)")
    if flat.size == row * height:
        plane = flat.reshape(height, row)
    elif flat.size % height == 0:
        # rows with padding: (bytes per row + padding) * height; keep the first `row` values of each row
        plane = flat.reshape(height, flat.size // height)[:, :row]
    else:
        plane = flat[: row * height].reshape(height, row)
    if channels == 1:
        if pixel_format in _BAYER:
            return cv2.cvtColor(np.ascontiguousarray(plane), _bayer_code(pixel_format))
        return plane.copy()  # copy: never hand out a view into the camera's buffer
    pixels = plane.reshape(height, width, channels)
    if pixel_format == "RGB8":
        return pixels.copy()
    if pixel_format == "BGR8":
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGR2RGB)
    if pixel_format == "RGBa8":
        return np.ascontiguousarray(pixels[:, :, :3])
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGRA2RGB)  # BGRa8
