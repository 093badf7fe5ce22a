"""The Unreal editor's driver sources (unreal-free, tested without the host).

The connection itself is the shared controller (``client/live.py``, shipped as
``megalive_bridge/vendor/client/live.py`` and reached through ``client_shim.live``); ``unreal_host.py``
drives it from Slate's post-tick with one of these sources. Each follows ``live.DriverSource``
(``frame_key()`` then ``payload(key)``, both cheap: they run on the tick) and adds what the host
needs: the session's wire ``driver_kind``, ``describe()`` for ``status()``, and ``close()``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Protocol

from ..client_shim import live, protocol

VIDEO_HINT = "video files: convert to an image sequence first, see unreal_bridge/README.md"


class EditorDriverSource(live.DriverSource, Protocol):
    """A ``live.DriverSource`` plus what the editor host needs around the session."""

    driver_kind: str  # the session's wire driver kind ("image", "arkit")

    def describe(self) -> str: ...

    def close(self) -> None: ...


class ImageSequenceSource:
    """Driver frames from a folder of PNG/JPEG files (sorted by name) or one image, looped at ``fps``.

    Files are sent as they are (encoded); the server decodes them."""

    driver_kind = "image"

    def __init__(
        self,
        *,
        path: str | os.PathLike[str],
        fps: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        max_cached_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if not fps > 0:
            raise live.DriverError(f"fps must be > 0, got {fps}")
        try:
            # One chosen image is a still, not "its folder" as in Blender: the editor has no scene frames.
            self.files = live.ImageSequenceFiles(path, file_means_its_folder=False, max_cached_bytes=max_cached_bytes)
        except live.DriverError as error:
            raise live.DriverError(f"{error} ({VIDEO_HINT})") from None
        self.path = Path(path)
        self.fps = fps
        self._clock = clock
        self._start = clock()

    def frame_key(self) -> Hashable | None:
        return int((self._clock() - self._start) * self.fps) % len(self.files)

    def payload(self, key: Hashable) -> protocol.Buffer:
        assert isinstance(key, int)
        return self.files.encoded(key)

    def describe(self) -> str:
        return f"{len(self.files)} frame(s) from {self.path} at {self.fps:g} fps"

    def close(self) -> None:
        self.files.clear_cache()


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
# The largest driver frame sent: 3840×2160 RGB is 24 MiB, within the protocol's default limits (a 32 MiB buffer,
# 4096×2304 pixels).
MAX_FRAME_PIXELS = 3840 * 2160


class VideoFileSource:
    """Driver frames decoded from a video file on a background thread, looped at the file's frame rate.

    Decoding uses the ffmpeg that the `imageio-ffmpeg` wheel bundles (install it into Unreal's Python
    beside pyzmq and msgpack). The tick only picks up the newest decoded frame: ``frame_key()`` never
    waits for the decoder. Frames go at their own aspect (crop "auto" lets the server find the face),
    upright (ffmpeg applies a phone video's rotation metadata); one larger than ``max_pixels`` (a 4K
    frame, within the wire's limits) is decoded scaled down, aspect kept."""

    driver_kind = "image"

    def __init__(
        self, *, path: str | os.PathLike[str], clock: Callable[[], float] = time.monotonic, max_pixels: int = MAX_FRAME_PIXELS
    ) -> None:
        try:
            import imageio_ffmpeg
        except ImportError:
            raise ValueError(
                "reading video files needs the imageio-ffmpeg package in this Python "
                "(pip install imageio-ffmpeg), or convert the video to an image sequence"
            ) from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"video file not found: {self.path}")
        self._imageio_ffmpeg = imageio_ffmpeg
        self._clock = clock
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self._newest: tuple[int, protocol.RawBuffer] | None = None  # written by the decoder thread
        self._picked: tuple[int, protocol.RawBuffer] | None = None  # the tick's snapshot, for payload()
        self._stop = threading.Event()
        self.error: str | None = None
        self.fps = 0.0
        self._thread = threading.Thread(target=self._decode_forever, name="megalive-video", daemon=True)
        self._thread.start()

    def _decode_forever(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                frames = self._imageio_ffmpeg.read_frames(str(self.path))
                meta = next(frames)
                width, height = meta["size"]
                if width * height > self.max_pixels:  # e.g. 8K: decode at about 4K, aspect kept (even sides)
                    frames.close()
                    scale = (self.max_pixels / (width * height)) ** 0.5
                    width, height = max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
                    frames = self._imageio_ffmpeg.read_frames(str(self.path), output_params=["-vf", f"scale={width}:{height}"])
                    meta = next(frames)
                    if tuple(meta["size"]) != (width, height):
                        raise ValueError(f"cannot scale its frames down to {width}×{height}")
                self.fps = float(meta.get("fps") or 25.0)
                began = self._clock()
                for number, raw in enumerate(frames):
                    if self._stop.is_set():
                        break
                    buffer = protocol.raw_buffer_from_bytes(raw, dtype="|u1", shape=(height, width, 3))
                    with self._lock:
                        self._newest = (index, buffer)
                    index += 1
                    # Pace at the file's rate so the avatar moves in real time, not as fast as ffmpeg decodes.
                    delay = began + (number + 1) / self.fps - self._clock()
                    if delay > 0:
                        self._stop.wait(delay)
                frames.close()
            except (RuntimeError, OSError, StopIteration, ValueError) as error:
                self.error = f"cannot read {self.path}: {error}"
                return

    def frame_key(self) -> Hashable | None:
        # Snapshot the pair: the decoder may move on before payload() is asked for this key.
        with self._lock:
            self._picked = self._newest
        return None if self._picked is None else self._picked[0]

    def payload(self, key: Hashable) -> protocol.Buffer:
        picked = self._picked
        assert picked is not None and picked[0] == key, "payload() asks for the key frame_key() returned"
        return picked[1]

    def describe(self) -> str:
        return f"video {self.path} at {self.fps:g} fps" + (f" ({self.error})" if self.error else "")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


class LiveLinkFaceSource:
    """Driver frames from Live Link Face received in the editor itself (ARKit sessions)."""

    driver_kind = "arkit"

    def __init__(self, *, subject: str | None = None, port: int | None = None, bind_address: str = "127.0.0.1") -> None:
        from ..livelink.receiver import DEFAULT_PORT, LiveLinkFaceReceiver

        self.subject = subject
        self.receiver = LiveLinkFaceReceiver(
            bind_address=bind_address, port=DEFAULT_PORT if port is None else port, max_packets_per_poll=256
        )

    def frame_key(self) -> Hashable | None:
        self.receiver.poll()  # non-blocking, bounded
        return self.receiver.latest(self.subject)  # the frame itself: a new packet is a new frame

    def payload(self, key: Hashable) -> protocol.Buffer:
        from ..livelink.packet import FaceFrame
        from ..relay import curves_payload

        assert isinstance(key, FaceFrame)
        return curves_payload(key)

    def describe(self) -> str:
        return f"Live Link Face on UDP {self.receiver.bind_address}:{self.receiver.port} ({self.subject or 'any subject'})"

    def close(self) -> None:
        self.receiver.close()
