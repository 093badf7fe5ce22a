"""LiveTextureController: the editor's connection to a MegaLive server, driven from a UI tick.

Unreal-free (tested without the host). The host calls ``connect()`` once from a user command (it
may block up to the client timeout), then ``tick()`` from Slate's post-tick callback and
``take_texture()`` for the newest rendered frame.

Why ``tick()`` cannot block: in the ``connected`` phase it calls only ``client.poll(timeout_ms=0)``,
``client.can_send`` and ``client.send_frame`` -- and ``send_frame`` only while the client holds a
socket and no session needs reopening (the two cases where it would do a blocking hello/open).
Anything that needs a request/reply round trip (reconnect, hello, open) runs on a background
thread, during which the tick does not touch the client at all; attempts back off exponentially.

States (``state``): "idle", "connecting", "connected", "server gone: <why>", "reconnecting",
"refused: <server message>", "stopped".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..client_shim import client as client_module
from ..client_shim import protocol

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


class DriverSource(Protocol):
    """Where driver frames come from. ``current()`` must not block: it is called from the tick."""

    driver_kind: str  # the session's wire driver kind ("image", "arkit")

    def current(self) -> tuple[object, protocol.Buffer] | None:
        """(a key that changes when the frame changes, the payload), or None when there is none yet."""
        ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class ImageSequenceSource:
    """Driver frames from a folder of PNG/JPEG files (sorted by name) or one image, looped at ``fps``.

    Files are sent as they are (encoded); the server decodes them. Video files are not read here:
    convert them first (e.g. ``ffmpeg -i take.mp4 frames/%05d.png``)."""

    driver_kind = "image"

    def __init__(self, *, path: str | os.PathLike[str], fps: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 max_cached_bytes: int = 256 * 1024 * 1024) -> None:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            files = [path]
        else:
            raise ValueError(f"{path} is neither a folder of PNG/JPEG frames nor a PNG/JPEG file "
                             "(video files: convert to an image sequence first, see unreal_bridge/README.md)")
        if not files:
            raise ValueError(f"{path} holds no .png/.jpg/.jpeg frames")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = path
        self.files = tuple(files)
        self.fps = fps
        self._clock = clock
        self._start = clock()
        self._cache: dict[int, bytes] = {}
        self._cached_bytes = 0
        self._max_cached_bytes = max_cached_bytes

    def _read(self, index: int) -> bytes:
        data = self._cache.get(index)
        if data is None:
            data = self.files[index].read_bytes()  # small files from local disk: well under a millisecond
            if self._cached_bytes + len(data) <= self._max_cached_bytes:
                self._cache[index] = data
                self._cached_bytes += len(data)
        return data

    def current(self) -> tuple[object, protocol.Buffer] | None:
        index = int((self._clock() - self._start) * self.fps) % len(self.files)
        codec = IMAGE_SUFFIXES[self.files[index].suffix.lower()]
        return index, protocol.EncodedBuffer(codec=codec, data=memoryview(self._read(index)))

    def describe(self) -> str:
        return f"{len(self.files)} frame(s) from {self.path} at {self.fps:g} fps"

    def close(self) -> None:
        self._cache.clear()


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


class VideoFileSource:
    """Driver frames decoded from a video file on a background thread, looped at the file's frame rate.

    Decoding uses the ffmpeg that the `imageio-ffmpeg` wheel bundles (install it into Unreal's Python
    beside pyzmq and msgpack). The tick only picks up the newest decoded frame: ``current()`` never
    waits for the decoder."""

    driver_kind = "image"

    def __init__(self, *, path: str | os.PathLike[str], clock: Callable[[], float] = time.monotonic) -> None:
        try:
            import imageio_ffmpeg
        except ImportError:
            raise ValueError("reading video files needs the imageio-ffmpeg package in this Python "
                             "(pip install imageio-ffmpeg), or convert the video to an image sequence") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"video file not found: {self.path}")
        self._imageio_ffmpeg = imageio_ffmpeg
        self._clock = clock
        self._lock = threading.Lock()
        self._newest: tuple[int, protocol.RawBuffer] | None = None
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

    def current(self) -> tuple[object, protocol.Buffer] | None:
        with self._lock:
            return self._newest

    def describe(self) -> str:
        return f"video {self.path} at {self.fps:g} fps" + (f" ({self.error})" if self.error else "")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


class LiveLinkFaceSource:
    """Driver frames from Live Link Face received in the editor itself (ARKit sessions)."""

    driver_kind = "arkit"

    def __init__(self, *, subject: str | None = None, port: int | None = None, bind_address: str = "0.0.0.0") -> None:
        from ..livelink_face import DEFAULT_PORT, LiveLinkFaceReceiver

        self.subject = subject
        self.receiver = LiveLinkFaceReceiver(bind_address=bind_address, port=DEFAULT_PORT if port is None else port,
                                             max_packets_per_poll=256)

    def current(self) -> tuple[object, protocol.Buffer] | None:
        from ..relay import curves_payload

        self.receiver.poll()  # non-blocking, bounded
        frame = self.receiver.latest(self.subject)
        return None if frame is None else (frame, curves_payload(frame))

    def describe(self) -> str:
        return f"Live Link Face on UDP {self.receiver.bind_address}:{self.receiver.port} ({self.subject or 'any subject'})"

    def close(self) -> None:
        self.receiver.close()


@dataclass(frozen=True)
class LiveTextureConfig:
    server: str = client_module.DEFAULT_ADDRESS
    avatar: int = 0
    output_size: tuple[int, int] | None = None  # (height, width); None: the model's resolution
    timeout_s: float = 1.0  # connect()/reconnect wait; also how long a frame may stay unanswered
    max_in_flight: int = 2
    reconnect_delay_s: float = 0.5  # first back-off after the server is gone; doubles per failure
    max_reconnect_delay_s: float = 5.0
    resend_still_s: float = 1.0  # resend an unchanged frame this often: an answer-less frame is how a gone server shows


@dataclass
class ControllerCounters:
    sent: int = 0
    textures: int = 0
    dropped: int = 0
    frame_errors: int = 0
    reconnects: int = 0


class LiveTextureController:
    def __init__(self, *, config: LiveTextureConfig, source: DriverSource,
                 client: client_module.AvatarClient | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.source = source
        self.client = client or client_module.AvatarClient(address=config.server, name="megalive-unreal",
                                                           timeout_s=config.timeout_s, max_in_flight=config.max_in_flight)
        self.counters = ControllerCounters()
        self._clock = clock
        self._phase = "idle"
        self._detail = ""
        self._session: int | None = None
        self._last_sent_key: object = None
        self._last_sent_at = float("-inf")
        self._newest: client_module.Texture | None = None
        self._delay_s = config.reconnect_delay_s
        self._next_attempt = 0.0
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None

    # ------------------------------------------------------------------------------ state

    @property
    def state(self) -> str:
        if self._phase in ("gone", "refused"):
            return f"{'server gone' if self._phase == 'gone' else 'refused'}: {self._detail}"
        return self._phase

    @property
    def connected(self) -> bool:
        return self._phase == "connected"

    # ------------------------------------------------------------------------------ user commands (may block)

    def connect(self) -> str:
        """hello + open, waiting at most the client timeout (call from a user command, not the tick)."""
        self._phase = "connecting"
        try:
            self._establish()
        except client_module.ServerGoneError as error:
            self._server_gone(str(error))
        except client_module.ServerError as error:
            self._refused(error)
        else:
            self._connected()
        return self.state

    def close(self) -> None:
        """Stop: wait for a running reconnect attempt, close the session and the socket."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout=2 * self.config.timeout_s + 1.0)
            self._worker = None
        self.client.close()
        self.source.close()
        self._session = None
        self._phase = "stopped"

    # ------------------------------------------------------------------------------ tick (never blocks)

    def tick(self) -> None:
        if self._phase == "connected":
            self._tick_connected()
        elif self._phase == "reconnecting":
            self._collect_worker()
        elif self._phase == "gone" and self._clock() >= self._next_attempt:
            self._start_worker()

    def take_texture(self) -> client_module.Texture | None:
        """The newest texture not taken yet (older ones were superseded: only the newest is kept)."""
        texture, self._newest = self._newest, None
        return texture

    def _tick_connected(self) -> None:
        client = self.client
        session = self._session
        assert session is not None
        try:
            for event in client.poll(timeout_ms=0):
                if isinstance(event, client_module.Texture):
                    self._newest = event
                    self.counters.textures += 1
                elif isinstance(event, client_module.FrameDropped):
                    self.counters.dropped += 1
                else:
                    self.counters.frame_errors += 1
                    if event.code == "unknown_session":
                        # The server restarted behind the same address: a send now would reopen (a blocking
                        # round trip), so hand the reopen to the background worker instead.
                        self._server_gone(f"the server forgot session ({event.message})", immediately=True)
                        return
                    self._detail = f"last frame error: {event.code}: {event.message}"
            if not client.connected or not client.can_send(session):
                return
            current = self.source.current()
            if current is None:
                return
            key, payload = current
            now = self._clock()
            if key == self._last_sent_key and now - self._last_sent_at < self.config.resend_still_s:
                return
            if client.send_frame(session, payload) is not None:
                self._last_sent_key, self._last_sent_at = key, now
                self.counters.sent += 1
        except client_module.ServerGoneError as error:
            self._server_gone(str(error))

    # ------------------------------------------------------------------------------ (re)connection

    def _establish(self) -> None:
        """The blocking part: first hello + open, or reconnect (hello + reopen of the session)."""
        if self._session is None:
            self.client.hello()
            self._session = self.client.open(avatar=self.config.avatar, driver=self.source.driver_kind,
                                             size=self.config.output_size, output_format="rgba8", crop="none")
        else:
            self.client.reconnect()

    def _start_worker(self) -> None:
        self._phase = "reconnecting"
        self._worker_error = None
        self._worker = threading.Thread(target=self._reconnect_in_background, name="megalive-reconnect", daemon=True)
        self._worker.start()

    def _reconnect_in_background(self) -> None:
        try:
            self._establish()
        except (client_module.ServerGoneError, client_module.ServerError) as error:
            self._worker_error = error

    def _collect_worker(self) -> None:
        worker = self._worker
        if worker is None or worker.is_alive():
            return
        worker.join()
        self._worker = None
        error = self._worker_error
        if error is None:
            self.counters.reconnects += 1
            self._connected()
        elif isinstance(error, client_module.ServerError):
            self._refused(error)
        else:
            self._server_gone(str(error))

    def _connected(self) -> None:
        self._phase = "connected"
        self._detail = ""
        self._last_sent_key = None  # resend the current frame to the (possibly new) session
        self._delay_s = self.config.reconnect_delay_s

    def _server_gone(self, why: str, *, immediately: bool = False) -> None:
        self._phase = "gone"
        self._detail = why
        self._next_attempt = self._clock() + (0.0 if immediately else self._delay_s)
        if not immediately:
            self._delay_s = min(self._delay_s * 2, self.config.max_reconnect_delay_s)

    def _refused(self, error: client_module.ServerError) -> None:
        self._phase = "refused"
        self._detail = error.message
