"""Where a camera's frames come from: video files, stream URLs, local devices, image folders.

Every source has one small interface, ``read() -> BGR image | None``: ``None`` means the
stream ended or was lost. ``ReconnectingSource`` wraps any of them and turns "lost" into
reopen-with-backoff, so the capture loop above it never deals with failures itself; a
source that stays unavailable for ``reconnect_give_up_s`` raises ``CameraLost``.

File-backed sources (video files, image folders) start again from the beginning when
they end, which is what a camera made from a file should do; a live source (URL, device)
that ends has been lost and is reconnected with a warning.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from runtime.log import get_logger
from schemas.config import CameraSource, IngestSettings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# How long OpenCV's FFmpeg backend may block opening or reading a network stream. Without
# these a stalled RTSP server would hang read() forever and the camera would never reconnect.
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 5_000


class SourceError(Exception):
    """A source could not be opened (file missing, device absent, URL refused)."""


class CameraLost(Exception):
    """A source stayed unavailable for longer than ``reconnect_give_up_s``."""


class FrameSource(Protocol):
    live: bool  # True: frames arrive in real time (URL, device); False: read as fast as asked

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class _CaptureSource:
    """A source backed by ``cv2.VideoCapture``."""

    live = False

    def __init__(self, target: str | int, description: str, *params: int) -> None:
        self.description = description
        self._cap = cv2.VideoCapture(target, cv2.CAP_ANY, list(params)) if params else cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"cannot open {description}")

    def read(self) -> np.ndarray | None:
        ok, image = self._cap.read()
        return image if ok and image is not None and image.size else None

    def close(self) -> None:
        self._cap.release()


class VideoFileSource(_CaptureSource):
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"video file not found: {path}")
        super().__init__(str(path), str(path))


class StreamSource(_CaptureSource):
    """An RTSP or HTTP(S) stream; ``description`` must already have credentials masked."""

    live = True

    def __init__(self, url: str, description: str) -> None:
        super().__init__(
            url,
            description,
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            STREAM_OPEN_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            STREAM_READ_TIMEOUT_MS,
        )


class DeviceSource(_CaptureSource):
    live = True

    def __init__(self, index: int) -> None:
        super().__init__(index, f"device:{index}")


class ImageFolderSource:
    """The images of a folder in name order, each file read when its turn comes."""

    live = False

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"image folder not found: {self.folder}")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"no images in {self.folder}")
        self._next = 0

    def read(self) -> np.ndarray | None:
        while self._next < len(self._files):
            path = self._files[self._next]
            self._next += 1
            if not path.exists():
                return None  # the folder changed under us: rescan on reopen
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image
            get_logger("ingest.sources").warning("unreadable image skipped", path=str(path))
        return None

    def close(self) -> None:
        self._files = []


def open_source(source: CameraSource) -> FrameSource:
    """Open the source a camera is configured with; raise ``SourceError`` if it is unavailable."""
    if source.video is not None:
        return VideoFileSource(source.video)
    if source.images is not None:
        return ImageFolderSource(source.images)
    if source.device is not None:
        return DeviceSource(source.device)
    assert source.url is not None
    return StreamSource(source.url, source.describe())


class ReconnectingSource:
    """Reopen a lost source with capped exponential backoff; give up after ``reconnect_give_up_s``.

    ``read()`` blocks while reconnecting and returns the next frame, or raises ``CameraLost``.
    ``stop()`` (callable returning True) makes a pending backoff return ``None`` promptly.
    """

    def __init__(
        self,
        source: CameraSource,
        settings: IngestSettings,
        *,
        opener: Callable[[CameraSource], FrameSource] = open_source,
        stop: Callable[[], bool] = lambda: False,
        camera: str = "",
    ) -> None:
        self.config = source
        self.settings = settings
        self._open = opener
        self._stop = stop
        self._source: FrameSource | None = None
        self.reconnects = 0  # reopenings after a failure (not the rewinds of file sources)
        self.log = get_logger("ingest.sources", camera=camera, source=source.describe())

    @property
    def live(self) -> bool:
        return self.config.url is not None or self.config.device is not None

    def read(self) -> np.ndarray | None:
        lost_since: float | None = None
        delay = self.settings.reconnect_initial_s
        attempts = 0
        rewound = False
        while not self._stop():
            if self._source is None:
                try:
                    self._source = self._open(self.config)
                    if lost_since is not None:
                        self.reconnects += 1
                        self.log.info("source reconnected", after_s=round(time.monotonic() - lost_since, 2))
                except SourceError as exc:
                    lost_since = lost_since or time.monotonic()
                    attempts += 1
                    self._give_up_if_due(lost_since, attempts, str(exc))
                    self.log.warning("source unavailable, retrying", error=str(exc), retry_in_s=round(delay, 2))
                    self._sleep(delay)
                    delay = min(delay * 2, self.settings.reconnect_max_s)
                    continue
            image = self._source.read()
            if image is not None:
                return image
            self._source.close()
            self._source = None
            if not self.live and not rewound and lost_since is None:
                # end of a file: start again at once; a second empty read in a row means trouble
                rewound = True
                self.log.debug("end of source, starting again")
                continue
            lost_since = lost_since or time.monotonic()
            attempts += 1
            self._give_up_if_due(lost_since, attempts, "no frames")
            self.log.warning("stream lost, reconnecting", retry_in_s=round(delay, 2))
            self._sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)
        return None

    def _give_up_if_due(self, lost_since: float, attempts: int, reason: str) -> None:
        down_s = time.monotonic() - lost_since
        if down_s >= self.settings.reconnect_give_up_s:
            self.log.error("camera lost", down_s=round(down_s, 1), attempts=attempts, reason=reason)
            raise CameraLost(f"{self.config.describe()}: no frames for {down_s:.0f}s ({reason})")

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop() and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
