"""Folder replay: the images of a folder, in name order, at a set rate or as fast as asked, looping or not.

For demos, for re-inspecting archived images, and for tests. Unreadable files are skipped and counted
as errors (the message names the file); a folder with no images is an error at construction.
"""
from __future__ import annotations

import logging
from pathlib import Path

from core.acquisition.base import Frame, PacedSource, SourceError, SourceState, host_now
from core.data.images import IMAGE_SUFFIXES, ImageError, read_image

log = logging.getLogger(__name__)


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` (by suffix), sorted by path."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SourceError(f"folder source: {folder} is not a folder")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class FolderSource(PacedSource):
    """Replays a folder's images.

    rate_hz: frames per second (None or 0 = as fast as fetch() is called; then the source is not ``live``
        and the pipeline reads it without dropping frames).
    loop: start again at the first image after the last; otherwise the state becomes FINISHED.
    """

    def __init__(self, folder: str | Path, *, rate_hz: float | None = None, loop: bool = False,
                 recursive: bool = False) -> None:
        self.folder = Path(folder).expanduser()
        self.files = list_images(self.folder, recursive)
        if not self.files:
            raise SourceError(f"folder source: {self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        super().__init__(f"folder:{self.folder.name}", rate_hz)
        self.loop = loop
        self.live = bool(rate_hz)  # paced like a camera: drop when behind; as fast as asked: lossless
        self._position = 0

    def rewind(self) -> None:
        """Back to the first image (a FINISHED source becomes STOPPED and can be started again)."""
        self._position = 0
        if self.state == SourceState.FINISHED:
            self._set_state(SourceState.STOPPED)

    def fetch(self, timeout_s: float) -> Frame | None:
        if not self._streaming_or_wait(timeout_s) or not self._frame_due(timeout_s):
            return None
        # skip unreadable files (counted) until one reads; at most one pass over the folder per call
        for _ in range(len(self.files)):
            if self._position >= len(self.files):
                if not self.loop:
                    self._set_state(SourceState.FINISHED, f"all {len(self.files)} images replayed")
                    return None
                self._position = 0
            path = self.files[self._position]
            self._position += 1
            try:
                image = read_image(path)
            except ImageError as exc:
                self._count("errors")
                log.warning("%s", exc)
                continue
            host_time, host_ns = host_now()
            self._count("frames")
            return Frame(image=image, camera_id=self.camera_id, sequence=self._next_sequence(),
                         camera_timestamp_ns=None, host_timestamp=host_time, host_monotonic_ns=host_ns,
                         pixel_format="file", origin=str(path))
        self._set_state(SourceState.ERROR, f"no readable image left in {self.folder}")
        return None
