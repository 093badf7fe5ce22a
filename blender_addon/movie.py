"""Movie clip driver frames, decoded with the ffmpeg that the imageio-ffmpeg wheel bundles. bpy-free.

Headless Blender cannot hand Python a movie's pixels per frame, so the extension decodes the clip's
file itself: ``MovieFrames`` runs one ffmpeg (``imageio_ffmpeg.read_frames``, raw RGB24) on a
background thread that decodes sequentially towards the frame last asked for (plus a short
look-ahead) into an LRU cache of raw frames bounded by ``max_cached_bytes``. The UI thread only
looks into the cache (``cached``: never waits); a blocking user command (the bake) uses ``frame``,
which waits for the decoder. A frame before the decoder's position, or far ahead of it, that is not
cached restarts ffmpeg with an input ``-ss`` (accurate seek) at that frame.

Frames come upright and at their own aspect: ffmpeg applies a phone video's rotation metadata (its
display matrix) as it decodes, as Blender's movie clip does (the clip's size and the frames agree). A
movie larger than ``MAX_FRAME_PIXELS`` (a 4K frame) is decoded scaled down to fit, aspect kept: a raw
frame above the wire's limits would be refused by the server.

Frame mapping (``MovieSource``): movie frame index = scene frame - ``frame_start`` + ``offset``
(0-based; Blender's clip frame 1 is index 0), **clamped**: scene frames before the clip show its first
frame, frames past its end its last (the true frame count is learnt when the decoder reaches the end).
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

from .wire import live, protocol

INSTALL_HINT = (
    "the movie clip driver needs imageio-ffmpeg in Blender's Python (it ships in the MegaLive "
    "extension zip; or run Blender's python -m pip install imageio-ffmpeg)"
)

# (meta dict, iterator of RGB24 frame bytes) for a movie decoded from frame ``start`` at ``fps``, scaled to ``size``
# (width, height; None: as stored, turned upright).
ReaderFactory = Callable[[Path, int, float, "tuple[int, int] | None"], tuple[dict, Iterator[bytes]]]

# The largest driver frame sent: 3840×2160 RGB is 24 MiB, within the protocol's default limits (a 32 MiB buffer,
# 4096×2304 pixels); an 8K movie is decoded at about 4K.
MAX_FRAME_PIXELS = 3840 * 2160


def fitting_size(width: int, height: int, *, max_pixels: int) -> tuple[int, int] | None:
    """The (width, height) to decode a movie at so a frame holds at most ``max_pixels``, aspect kept (even sides, as
    the scaler likes them); None when it fits as it is."""
    if width * height <= max_pixels:
        return None
    scale = (max_pixels / (width * height)) ** 0.5
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def imageio_ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def _make_bundled_ffmpeg_executable(module: object) -> None:
    """Blender extracts wheels without Unix permissions: give the bundled ffmpeg its execute bit back."""
    binaries = Path(getattr(module, "__file__", "")).parent / "binaries"
    try:
        for candidate in binaries.glob("ffmpeg-*"):
            if candidate.is_file() and os.name != "nt" and not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError:
        pass  # imageio-ffmpeg then falls back to a system ffmpeg, or says there is none


def imageio_reader(path: Path, start: int, fps: float, size: tuple[int, int] | None = None) -> tuple[dict, Iterator[bytes]]:
    """ffmpeg through imageio-ffmpeg, from frame ``start`` (input -ss half a frame early: exactly that frame), scaled
    to ``size`` when given."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise live.DriverError(INSTALL_HINT) from None
    _make_bundled_ffmpeg_executable(imageio_ffmpeg)
    input_params = ["-ss", f"{max(0.0, (start - 0.5) / fps):.6f}"] if start > 0 else []
    try:
        output_params = ["-vf", f"scale={size[0]}:{size[1]}"] if size is not None else []
        frames = imageio_ffmpeg.read_frames(str(path), input_params=input_params, output_params=output_params)
        meta = next(frames)
    except (OSError, RuntimeError, StopIteration) as error:
        message = str(error).strip().splitlines()
        raise live.DriverError(f"cannot read movie {path.name}: {message[0] if message else type(error).__name__}") from None
    return meta, frames


class MovieFrames:
    """Raw RGB24 frames of one movie file by 0-based index, decoded on a background thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_cached_bytes: int = 256 * 1024 * 1024,
        lookahead: int = 8,
        reader: ReaderFactory = imageio_reader,
        max_pixels: int = MAX_FRAME_PIXELS,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise live.DriverError(f"movie {self.path}: no such file")
        self._reader_factory = reader
        meta, frames = reader(self.path, 0, 0.0, None)  # reads the header: an unreadable file fails here, synchronously
        try:
            self.width, self.height = (int(n) for n in meta["size"])
            self.fps = float(meta.get("fps") or 0.0)
            if self.width <= 0 or self.height <= 0 or self.fps <= 0:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            _close(frames)
            raise live.DriverError(f"cannot read movie {self.path.name}: no video stream") from None
        self.stored_size = (self.width, self.height)  # upright, before any scaling
        self.scaled_to = fitting_size(self.width, self.height, max_pixels=max_pixels)
        if self.scaled_to is not None:
            _close(frames)
            meta, frames = reader(self.path, 0, self.fps, self.scaled_to)
            if tuple(int(n) for n in meta.get("size", ())) != self.scaled_to:
                _close(frames)
                raise live.DriverError(f"movie {self.path.name}: cannot scale its {self.width}×{self.height} frames down")
            self.width, self.height = self.scaled_to
        self.frame_bytes = self.width * self.height * 3
        self.max_cached_frames = max(2, max_cached_bytes // self.frame_bytes)
        self.lookahead = max(0, min(lookahead, self.max_cached_frames - 1))
        self.reader_starts = 1  # how often ffmpeg was started (1 + seeks)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._condition = threading.Condition()
        self._target = 0
        self._position = 0  # index of the frame the reader yields next
        self._count: int | None = None  # known once the decoder reached the end
        self._error: live.DriverError | None = None
        self._stop = False
        self._find_end = False  # a seek went past the end: decode from frame 0, no forward seeks, until the end
        self._thread = threading.Thread(target=self._run, args=(frames,), name=f"megalive-movie-{self.path.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ any thread

    @property
    def frame_count(self) -> int | None:
        return self._count

    def cached_indices(self) -> list[int]:
        with self._condition:
            return list(self._cache)

    def clamp(self, index: int) -> int:
        index = max(0, index)
        return index if self._count is None else min(index, self._count - 1)

    def request(self, index: int) -> int:
        """Make ``index`` the decoder's target; returns the clamped index."""
        with self._condition:
            index = self.clamp(index)
            if index != self._target:
                self._target = index
                self._condition.notify_all()
            return index

    def cached(self, index: int) -> bytes | None:
        """The frame if decoded (and asks for it otherwise); never waits. DriverError when decoding failed."""
        with self._condition:
            index = self.request(index)
            data = self._cache.get(index)
            if data is not None:
                self._cache.move_to_end(index)
                return data
            if self._error is not None:
                raise self._error
            return None

    def frame(self, index: int, *, timeout_s: float = 60.0) -> bytes:
        """The frame, waiting for the decoder (user commands only, e.g. a bake)."""
        with self._condition:
            ok = self._condition.wait_for(
                lambda: self._stop or self._error is not None or self.cached(index) is not None, timeout=timeout_s
            )
            data = None if self._stop else self._cache.get(self.clamp(index))
            if data is not None:
                return data
            if self._error is not None:
                raise self._error
            raise live.DriverError("the movie decoder was closed" if ok else f"movie frame {index} not decoded within {timeout_s:.0f} s")

    def raw_buffer(self, data: bytes) -> protocol.RawBuffer:
        return protocol.raw_buffer_from_bytes(data, dtype="|u1", shape=(self.height, self.width, 3))

    def close(self, *, wait_s: float = 2.0) -> None:
        with self._condition:
            self._stop = True
            self._condition.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=wait_s)
        with self._condition:
            self._cache.clear()

    # ------------------------------------------------------------------------------ decoder thread

    def _restart_at(self) -> int | None:
        """Where ffmpeg must restart for the target (None: keep decoding sequentially). Under the lock."""
        target = self.clamp(self._target)
        if target in self._cache:
            return None
        if self._find_end:
            return 0 if self._position > 0 and target < self._position else None
        far = max(2 * self.lookahead, int(2 * self.fps), 1)
        if target < self._position or target > self._position + far:
            return target
        return None

    def _idle(self) -> bool:
        target = self.clamp(self._target)
        ahead = self._position > target + self.lookahead
        at_end = self._count is not None and self._position >= self._count
        return (ahead or at_end) and self._restart_at() is None

    def _run(self, frames: Iterator[bytes]) -> None:
        try:
            while True:
                with self._condition:
                    self._condition.wait_for(lambda: self._stop or not self._idle())
                    if self._stop:
                        return
                    restart = self._restart_at()
                    position = self._position
                if restart is not None:
                    _close(frames)
                    try:
                        _, frames = self._reader_factory(self.path, restart, self.fps, self.scaled_to)
                    except live.DriverError as error:
                        self._fail(error)
                        return
                    self.reader_starts += 1
                    position = restart
                    with self._condition:
                        self._position = restart
                try:
                    data = bytes(next(frames))
                except StopIteration:
                    with self._condition:
                        if position == 0:
                            self._error = live.DriverError(f"movie {self.path.name} has no frames")
                            self._condition.notify_all()
                            return
                        if restart is not None:  # a seek past the end: decode from the start to find it
                            self._find_end = True
                            self._position = 1 << 62
                        else:
                            self._count = position
                            self._find_end = False
                        self._condition.notify_all()
                    continue
                except (OSError, RuntimeError) as error:
                    self._fail(live.DriverError(f"cannot decode movie {self.path.name}: {str(error).strip()[:200]}"))
                    return
                if len(data) != self.frame_bytes:
                    self._fail(live.DriverError(f"movie {self.path.name}: frame {position} has an unexpected size"))
                    return
                with self._condition:
                    self._cache[position] = data
                    self._cache.move_to_end(position)
                    target = self.clamp(self._target)
                    while len(self._cache) > self.max_cached_frames:
                        oldest = next(iter(self._cache))
                        if oldest == target:
                            self._cache.move_to_end(oldest)
                            oldest = next(iter(self._cache))
                        del self._cache[oldest]
                    self._position = position + 1
                    self._condition.notify_all()
        finally:
            _close(frames)

    def _fail(self, error: live.DriverError) -> None:
        with self._condition:
            self._error = error
            self._condition.notify_all()


def _close(frames: Iterator[bytes]) -> None:
    close = getattr(frames, "close", None)
    if close is not None:
        try:
            close()  # imageio-ffmpeg's generator stops its ffmpeg process
        except Exception:  # noqa: BLE001 - a dying ffmpeg must not take the decoder thread's cleanup down
            pass


class MovieSource:
    """A DriverSource over MovieFrames; keys are scene frames (what the bake passes to ``payload``).

    ``frame_key`` returns None (the tick skips) until the current frame is decoded, and pins that
    frame so ``payload`` in the same tick never waits; ``payload`` of another key (the bake) waits."""

    def __init__(self, frames: MovieFrames, *, current_frame: Callable[[], int], frame_start: int, offset: int = 0) -> None:
        self.frames = frames
        self.current_frame = current_frame
        self.frame_start = frame_start
        self.offset = offset
        self._pinned: tuple[int, bytes] | None = None

    def index(self, scene_frame: int) -> int:
        return scene_frame - self.frame_start + self.offset

    def frame_key(self) -> Hashable | None:
        scene_frame = self.current_frame()
        data = self.frames.cached(self.index(scene_frame))
        if data is None:
            return None
        self._pinned = (scene_frame, data)
        return scene_frame

    def payload(self, key: Hashable) -> protocol.Buffer:
        assert isinstance(key, int)
        pinned = self._pinned
        data = pinned[1] if pinned is not None and pinned[0] == key else self.frames.frame(self.index(key))
        return self.frames.raw_buffer(data)

    def close(self) -> None:
        self._pinned = None
        self.frames.close()
