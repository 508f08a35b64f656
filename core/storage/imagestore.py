"""Content-addressed image files beside the database: ``<data_dir>/images/ab/cd/<sha256>.png``.

The name is the sha256 of the encoded PNG bytes, so identical images are stored once and a file can be
checked against its row. Files are written to a temporary name, flushed to disk and renamed, so a
reader (or a crash) never sees a half-written image under its final name.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.images import ImageError, encode_png, read_image, read_mask

STORE_DIR = "images"


@dataclass(frozen=True)
class StoredFile:
    """relative_path: relative to the data directory, '/'-separated. sha256: hex digest of the PNG bytes."""

    relative_path: str
    sha256: str


class ImageStore:
    """PNG files named by content hash under ``<data_dir>/images``. Thread-safe; safe to share across processes."""

    def __init__(self, data_dir: str | Path, *, durable: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.durable = durable  # fsync each new file before it is renamed into place

    def put_image(self, image: np.ndarray) -> StoredFile:
        """Store a station image ((H, W) or (H, W, 3), uint8/uint16)."""
        return self.put_bytes(encode_png(image))

    def put_mask(self, mask: np.ndarray) -> StoredFile:
        """Store a bool (H, W) mask as an 8-bit PNG (0 / 255)."""
        return self.put_bytes(encode_png(np.ascontiguousarray(mask, dtype=np.uint8) * np.uint8(255)))

    def put_bytes(self, png: bytes) -> StoredFile:
        """Store encoded PNG bytes; a file that already exists under the hash is left as it is."""
        digest = hashlib.sha256(png).hexdigest()
        relative = f"{STORE_DIR}/{digest[:2]}/{digest[2:4]}/{digest}.png"
        final = self.data_dir / relative
        if final.is_file():
            return StoredFile(relative, digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(png)
                if self.durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, final)  # atomic; a concurrent writer of the same hash wrote identical bytes
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredFile(relative, digest)

    def remove_stale_temp_files(self, min_age_s: float = 3600.0) -> int:
        """Delete temporary files left by a writer that was killed mid-write (older than ``min_age_s``, so a
        write in progress is never touched). Returns how many were removed. Walks the whole store."""
        root = self.data_dir / STORE_DIR
        if not root.is_dir():
            return 0
        cutoff = time.time() - float(min_age_s)
        removed = 0
        for path in root.glob("*/*/.tmp-*.png"):
            try:
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another process cleaned it or renamed it into place
                continue
        return removed

    def path(self, relative_path: str) -> Path:
        """Absolute path of a stored file; refuses paths that would leave the data directory."""
        candidate = (self.data_dir / relative_path).resolve()
        if not candidate.is_relative_to(self.data_dir.resolve()):
            raise ImageError(f"stored path {relative_path!r} points outside the data directory")
        return candidate

    def read_image(self, relative_path: str, sha256: str | None = None) -> np.ndarray:
        """Load a stored image; when ``sha256`` is given the file's bytes are checked against it."""
        path = self.path(relative_path)
        if sha256 is not None:
            self.verify(relative_path, sha256)
        return read_image(path)

    def read_mask(self, relative_path: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Load a stored mask as bool (H, W)."""
        return read_mask(self.path(relative_path), shape)

    def verify(self, relative_path: str, sha256: str) -> None:
        """Raise ImageError when the file is missing or its content no longer matches ``sha256``."""
        path = self.path(relative_path)
        if not path.is_file():
            raise ImageError(f"{path}: stored image file is missing")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != sha256:
            raise ImageError(f"{path}: content does not match its recorded sha256 (file corrupted)")
