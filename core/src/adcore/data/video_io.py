"""Reading frames of videos and frame folders one at a time, never a whole video at once.

A video is either a file (``.avi .mp4 .mov .mkv``, decoded with OpenCV, installed by
``pip install adcore[video]``) or a folder of frame images sorted by name (read with the
image path's :func:`~adcore.data.image_io.read_image`, so a frame folder decodes exactly
like an image dataset).

:class:`FrameReader` keeps one open capture per video (a few at most) and its position:
reading frame ``i`` after frame ``i - 1`` decodes one frame; a short jump forward skips
(``grab``) the frames between; anything else seeks with ``CAP_PROP_POS_FRAMES`` and checks
the position the decoder reports. Memory is one decoded frame per open video, whatever
the video's length. ``decoded`` counts decoded frames (the tests check laziness with it).
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from pathlib import Path

import attrs
import numpy as np
from PIL import Image

from adcore.data.image_io import ImageReadError, list_images, read_image

VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".mkv"}
#: Jumps forward up to this many frames are read through (grab) rather than sought.
_SKIP_LIMIT = 64
#: Open captures kept per process (per DataLoader worker).
_OPEN_VIDEOS = 4


class VideoReadError(ImageReadError):
    """A video file or frame folder is missing, unreadable or shorter than it says."""


def cv2_module():
    """OpenCV, imported on first use; a one-line error when it is not installed."""
    try:
        import cv2
    except ImportError:
        raise VideoReadError("reading video files needs OpenCV: pip install 'adcore[video]'") from None
    return cv2


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".") and path.is_file()


@attrs.frozen
class VideoSource:
    """One video: a file, or a frame folder with its frame files; ``frames`` is the verified count."""

    path: Path
    frames: int
    frame_files: tuple[Path, ...] | None = None  # a frame folder's images, sorted

    @property
    def name(self) -> str:
        """The video's name in tables and label files: the file stem, or the folder name."""
        return self.path.stem if self.frame_files is None else self.path.name

    def frame_path(self, index: int) -> str:
        """A path-like string per frame: the frame image, or ``video.avi#000123``."""
        if self.frame_files is not None:
            return str(self.frame_files[index])
        return f"{self.path}#{index:06d}"


def _open_capture(path: Path):
    cv2 = cv2_module()
    if not path.is_file():
        raise VideoReadError(f"{path}: video file not found" if not path.exists() else f"{path}: not a regular file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoReadError(f"{path}: cannot open video (unknown format or corrupt file)")
    return capture


def probe_video(path: str | os.PathLike) -> VideoSource:
    """A video file's frame count, verified: the container's count is trusted only if its last frame decodes.

    Otherwise the frames are counted by reading through the file once (grab, nothing kept).
    """
    path = Path(path)
    cv2 = cv2_module()
    capture = _open_capture(path)
    try:
        claimed = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if claimed > 0:
            capture.set(cv2.CAP_PROP_POS_FRAMES, claimed - 1)
            if capture.grab() and not capture.grab():  # the last frame exists and nothing follows it
                return VideoSource(path, claimed)
            capture.release()
            capture = _open_capture(path)
        count = 0
        while capture.grab():
            count += 1
    finally:
        capture.release()
    if count == 0:
        raise VideoReadError(f"{path}: video has no readable frames")
    return VideoSource(path, count)


def frame_folder(path: str | os.PathLike) -> VideoSource:
    """A folder of frame images (sorted by name) as one video."""
    path = Path(path)
    files = tuple(list_images(path))
    if not files:
        raise VideoReadError(f"{path}: frame folder has no images")
    return VideoSource(path, len(files), files)


def video_source(path: str | os.PathLike) -> VideoSource:
    path = Path(path)
    return frame_folder(path) if path.is_dir() else probe_video(path)


class _Capture:
    """An open capture and the index of the frame its next read returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.capture = _open_capture(path)
        self.position = 0

    def read(self, index: int, reader: FrameReader) -> np.ndarray:
        cv2 = cv2_module()
        if not (self.position <= index <= self.position + _SKIP_LIMIT):
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            reported = round(self.capture.get(cv2.CAP_PROP_POS_FRAMES))
            if reported != index:  # an inexact seek: read through from the start instead
                self.capture.release()
                self.capture, self.position = _open_capture(self.path), 0
            else:
                self.position = index
        while self.position < index:
            if not self.capture.grab():
                raise VideoReadError(f"{self.path}: cannot read frame {self.position} (the video ends early)")
            self.position += 1
            reader.decoded += 1
        ok, frame = self.capture.read()
        if not ok or frame is None:
            raise VideoReadError(f"{self.path}: cannot read frame {index} (corrupt or shorter than it says)")
        self.position = index + 1
        reader.decoded += 1
        if frame.ndim == 2:
            return np.repeat(frame[:, :, None], 3, axis=2)
        return frame[:, :, 2::-1]  # BGR -> RGB (a view; PIL copies it)

    def close(self) -> None:
        self.capture.release()


class FrameReader:
    """Frames of videos as RGB PIL images, one at a time, with a few captures kept open.

    Not shared between processes: each DataLoader worker gets a fresh one (pickling drops
    the open captures).
    """

    def __init__(self, max_open: int = _OPEN_VIDEOS) -> None:
        self.max_open = max_open
        self._open: OrderedDict[Path, _Capture] = OrderedDict()
        self._pid = os.getpid()
        self._inherited: list[_Capture] = []
        self.decoded = 0

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "_open": OrderedDict(), "_pid": None, "_inherited": [], "decoded": 0}

    def _check_process(self) -> None:
        """A forked DataLoader worker must not touch its parent's decoders (their threads did not fork).

        It opens its own; the inherited ones are kept referenced, never used or released
        (releasing them could wait forever on threads that do not exist in this process).
        """
        if self._pid != os.getpid():
            self._inherited += self._open.values()
            self._open = OrderedDict()
            self._pid = os.getpid()

    def frame(self, source: VideoSource, index: int) -> Image.Image:
        if not 0 <= index < source.frames:
            raise VideoReadError(f"{source.path}: frame {index} out of range (the video has {source.frames} frames)")
        if source.frame_files is not None:
            self.decoded += 1
            return read_image(source.frame_files[index])
        self._check_process()
        capture = self._open.get(source.path)
        if capture is None:
            capture = self._open[source.path] = _Capture(source.path)
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(source.path)
        return Image.fromarray(np.ascontiguousarray(capture.read(index, self)))

    def close(self) -> None:
        if self._pid != os.getpid():
            return  # inherited decoders: see _check_process
        for capture in self._open.values():
            capture.close()
        self._open.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()
