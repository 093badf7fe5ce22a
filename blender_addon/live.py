"""LiveController: the extension's connection to a MegaLive server, driven from a bpy timer.

bpy-free (tested without Blender); the bpy layer (``ui.py``) supplies driver frames through a
``DriverSource`` and writes the texture ``tick()`` returns into an Image.

Same design as ``unreal_bridge/editor/live_texture.py`` (which cannot ship inside the Blender zip):
user commands (``connect``, ``start_live``) may block up to the client timeout; ``tick()`` never
does. In the ``live`` phase the tick calls only ``client.poll(timeout_ms=0)``, ``client.can_send``
and ``client.send_frame`` -- the latter only while the client holds a socket and no session needs
reopening, the two cases where it would do a blocking hello/open. Anything needing a round trip
(reconnect + reopen) runs on a background thread, during which the tick does not touch the client
at all; attempts back off exponentially. The worker never touches bpy: it owns only the client.

Phases: "disconnected", "connected" (hello done, not live), "live", "gone" (server gone, waiting
to retry), "reconnecting" (worker running), "refused" (the server said no, e.g. unknown avatar).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import zmq

from .wire import client as client_module
from .wire import protocol

DEFAULT_ADDRESS = client_module.DEFAULT_ADDRESS
IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


class DriverError(ValueError):
    """A driver source cannot be read (missing folder, unreadable clip, no frames)."""


class DriverSource(Protocol):
    """Driver frames for the tick and the bake; both methods run on Blender's main thread."""

    def frame_key(self) -> Hashable | None:
        """Something cheap that changes when the driver frame changes (e.g. the scene frame); None: no frame."""
        ...

    def payload(self, key: Hashable) -> protocol.Buffer:
        """The driver frame for ``key``: an encoded image or an H×W×3 uint8 RawBuffer."""
        ...


class ImageSequenceFiles:
    """A folder of PNG/JPEG frames (sorted by name), or the folder of one chosen frame.

    Index i is the i-th file, looped. Files go to the server as they are (it decodes them), so the
    tick only reads bytes from disk."""

    def __init__(self, path: str | os.PathLike[str], *, max_cached_bytes: int = 256 * 1024 * 1024) -> None:
        path = Path(path)
        if not path.exists():
            raise DriverError(f"image sequence {path}: no such folder")
        folder = path if path.is_dir() else path.parent
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DriverError(f"image sequence {folder}: no .png/.jpg/.jpeg frames")
        self.folder = folder
        self.files = tuple(files)
        self._cache: dict[int, bytes] = {}
        self._cached_bytes = 0
        self._max_cached_bytes = max_cached_bytes

    def __len__(self) -> int:
        return len(self.files)

    def encoded(self, index: int) -> protocol.EncodedBuffer:
        index %= len(self.files)
        data = self._cache.get(index)
        if data is None:
            try:
                data = self.files[index].read_bytes()
            except OSError as error:
                raise DriverError(f"cannot read driver frame {self.files[index]}: {error.strerror}") from None
            if self._cached_bytes + len(data) <= self._max_cached_bytes:
                self._cache[index] = data
                self._cached_bytes += len(data)
        return protocol.EncodedBuffer(codec=IMAGE_SUFFIXES[self.files[index].suffix.lower()], data=memoryview(data))


@dataclass(frozen=True)
class LiveConfig:
    server: str = DEFAULT_ADDRESS
    timeout_s: float = 2.0  # user-command wait; also how long a frame may stay unanswered
    max_in_flight: int = 2
    reconnect_delay_s: float = 0.5  # first back-off after the server is gone; doubles per failure
    max_reconnect_delay_s: float = 5.0
    resend_still_s: float = 1.0  # resend an unchanged frame this often: an unanswered frame is how a gone server shows
    figures_window: int = 30  # textures the fps / latency figures average over


@dataclass
class LiveFigures:
    sent: int = 0
    textures: int = 0
    dropped: int = 0
    frame_errors: int = 0
    reconnects: int = 0
    received_at: deque[float] = field(default_factory=lambda: deque(maxlen=30))
    round_trip_ms: deque[float] = field(default_factory=lambda: deque(maxlen=30))

    @property
    def fps(self) -> float:
        if len(self.received_at) < 2 or self.received_at[-1] <= self.received_at[0]:
            return 0.0
        return (len(self.received_at) - 1) / (self.received_at[-1] - self.received_at[0])

    @property
    def latency_ms(self) -> float:
        return sum(self.round_trip_ms) / len(self.round_trip_ms) if self.round_trip_ms else 0.0

    def summary(self) -> str:
        return f"{self.fps:.1f} fps · {self.latency_ms:.0f} ms · {self.dropped} dropped"


class LiveController:
    def __init__(self, *, config: LiveConfig, client: client_module.AvatarClient | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.client = client or client_module.AvatarClient(address=config.server, name="megalive-blender",
                                                           timeout_s=config.timeout_s, max_in_flight=config.max_in_flight)
        self.figures = LiveFigures(received_at=deque(maxlen=config.figures_window),
                                   round_trip_ms=deque(maxlen=config.figures_window))
        self.avatars: list[client_module.AvatarEntry] = []
        self._clock = clock
        self._phase = "disconnected"
        self._detail = ""
        self._session: int | None = None
        self._session_size: tuple[int, int] | None = None
        self._last_sent_key: Hashable | None = None
        self._last_sent_at = float("-inf")
        self._delay_s = config.reconnect_delay_s
        self._next_attempt = 0.0
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------------------ state

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def status(self) -> str:
        """One line for the panel."""
        labels = {"disconnected": "Disconnected", "connected": "Connected", "live": "Live",
                  "gone": "Server gone", "reconnecting": "Reconnecting…", "refused": "Refused"}
        label = labels[self._phase]
        return f"{label}: {self._detail}" if self._detail else label

    @property
    def is_live(self) -> bool:
        """A live session exists (it may be reconnecting)."""
        return self._session is not None

    @property
    def worker_running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    # ------------------------------------------------------------------------------ user commands (may block)

    def connect(self) -> bool:
        """hello + avatars, waiting at most the client timeout. False (and a status) when it fails."""
        if self.worker_running:
            self._detail = "a reconnect attempt is still running"
            return False
        try:
            info = self.client.hello()
            self.avatars = self.client.avatars()
        except client_module.ServerGoneError as error:
            self._set("disconnected", f"cannot reach {self.config.server}: {error}")
            return False
        except zmq.ZMQError as error:  # a malformed address: ZeroMQ refuses to connect at all
            self._set("disconnected", f"bad server address {self.config.server!r}: {error}")
            return False
        except client_module.ServerError as error:
            self._set("refused", error.message)
            return False
        self._set("live" if self._session is not None else "connected", f"{info.server}, {len(self.avatars)} avatars")
        return True

    def start_live(self, *, avatar: int, size: tuple[int, int] | None = None) -> bool:
        """Open the live session (blocking, at most the client timeout). False (and a status) when refused."""
        if self._phase not in ("connected", "live") or self.worker_running:
            self._detail = "connect first"
            return False
        if self._session is not None:
            self.stop_live()
        try:
            self._session = self.client.open(avatar=avatar, driver="image", size=size, output_format="rgba8", crop="none")
        except client_module.ServerGoneError as error:
            self._server_gone(str(error))
            self._session = None
            return False
        except client_module.ServerError as error:
            self._set("connected", f"open refused: {error.message}")
            return False
        self._session_size = size
        self._last_sent_key = None
        self._set("live", "")
        return True

    def stop_live(self) -> None:
        """Close the live session (best effort; a gone server is not waited for)."""
        session, self._session = self._session, None
        if session is None or self.worker_running:
            return
        try:
            self.client.close_session(session)
        except (client_module.ServerGoneError, client_module.ServerError, KeyError):
            pass  # the session is gone either way; nothing left to undo
        if self._phase == "live":
            self._set("connected", "")

    def close(self, *, wait_s: float = 0.5) -> None:
        """Stop everything: the session, the socket, the reconnect worker (abandoned after wait_s).

        A worker still running after wait_s owns the client: it closes it itself when its attempt ends."""
        self._closed = True
        worker = self._worker
        if worker is not None and worker.is_alive():
            worker.join(timeout=wait_s)
        if worker is None or not worker.is_alive():
            self.client.close()
        self._worker = None
        self._session = None
        self._set("disconnected", "")

    # ------------------------------------------------------------------------------ tick (never blocks)

    def tick(self, source: DriverSource | None) -> client_module.Texture | None:
        """Drain replies, send the current driver frame when the window allows; return the newest texture."""
        if self._phase == "live":
            return self._tick_live(source)
        if self._phase == "reconnecting":
            self._collect_worker()
        elif self._phase == "gone" and self._session is not None and self._clock() >= self._next_attempt:
            self._start_worker()
        return None

    def _tick_live(self, source: DriverSource | None) -> client_module.Texture | None:
        client = self.client
        session = self._session
        assert session is not None
        newest: client_module.Texture | None = None
        try:
            for event in client.poll(timeout_ms=0):
                if isinstance(event, client_module.Texture):
                    newest = event
                    self.figures.textures += 1
                    self.figures.received_at.append(event.received_at)
                    self.figures.round_trip_ms.append(event.round_trip_ms)
                elif isinstance(event, client_module.FrameDropped):
                    self.figures.dropped += 1
                else:
                    self.figures.frame_errors += 1
                    if event.code == "unknown_session":
                        # The server restarted behind the same address: a send now would reopen (a blocking
                        # round trip), so hand the reopen to the background worker instead.
                        self._server_gone(f"the server forgot the session ({event.message})", immediately=True)
                        return newest
                    self._detail = f"frame error: {event.code}: {event.message}"
            if source is None or not client.connected or not client.can_send(session):
                return newest
            key = source.frame_key()
            now = self._clock()
            if key is None or (key == self._last_sent_key and now - self._last_sent_at < self.config.resend_still_s):
                return newest
            payload = source.payload(key)
            if client.send_frame(session, payload) is not None:
                self._last_sent_key, self._last_sent_at = key, now
                self.figures.sent += 1
        except client_module.ServerGoneError as error:
            self._server_gone(str(error))
        except DriverError as error:
            self._detail = f"driver: {error}"
        return newest

    # ------------------------------------------------------------------------------ reconnection (background)

    def _start_worker(self) -> None:
        self._phase = "reconnecting"
        self._worker_error = None
        self._worker = threading.Thread(target=self._reconnect_in_background, name="megalive-blender-reconnect", daemon=True)
        self._worker.start()

    def _reconnect_in_background(self) -> None:
        try:
            self.client.reconnect()  # hello + reopen of the live session, same handle
        except (client_module.ServerGoneError, client_module.ServerError) as error:
            self._worker_error = error
        if self._closed:
            self.client.close()  # close() gave up waiting for us: we own the client, so we close it

    def _collect_worker(self) -> None:
        worker = self._worker
        if worker is None or worker.is_alive():
            return
        worker.join()
        self._worker = None
        error = self._worker_error
        if error is None:
            self.figures.reconnects += 1
            self._last_sent_key = None
            self._delay_s = self.config.reconnect_delay_s
            self._set("live", f"reconnected ({self.figures.reconnects})")
        elif isinstance(error, client_module.ServerError):
            # e.g. unknown_avatar: the restarted server has no such avatar; retrying will not help.
            self._session = None
            self.client.close()
            self._set("refused", f"{error.code}: {error.message}")
        else:
            self._server_gone(str(error))

    def _server_gone(self, why: str, *, immediately: bool = False) -> None:
        self._set("gone", why)
        self._next_attempt = self._clock() + (0.0 if immediately else self._delay_s)
        if not immediately:
            self._delay_s = min(self._delay_s * 2, self.config.max_reconnect_delay_s)

    def _set(self, phase: str, detail: str) -> None:
        self._phase = phase
        self._detail = detail


# ------------------------------------------------------------------------------------------------
# Bake: one frame at a time, waiting for each (a user command, not the tick)


class BakeError(RuntimeError):
    """A frame could not be rendered (server gone, refused, timed out)."""


def render_one_frame(client: client_module.AvatarClient, session: int, payload: protocol.Buffer, *,
                     timeout_s: float) -> "client_module.protocol.RawBuffer":
    """Send one driver frame and wait (at most timeout_s) for its texture."""
    try:
        seq = client.send_frame(session, payload)
        if seq is None:
            raise BakeError("the in-flight window is full (a previous frame is still unanswered)")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in client.poll(timeout_ms=50):
                if event.seq != seq:
                    continue
                if isinstance(event, client_module.Texture):
                    if not isinstance(event.buffer, protocol.RawBuffer):
                        raise BakeError("the server sent an encoded texture; the bake asks for rgba8")
                    return event.buffer
                if isinstance(event, client_module.FrameError):
                    raise BakeError(f"{event.code}: {event.message}")
                raise BakeError("the server dropped the frame")  # cannot happen with one frame in flight
    except client_module.ServerGoneError as error:
        raise BakeError(str(error)) from None
    except client_module.ServerError as error:
        raise BakeError(f"{error.code}: {error.message}") from None
    raise BakeError(f"no texture within {timeout_s:.1f} s")


def bake_frame_name(prefix: str, frame: int) -> str:
    """File name of one baked frame; Blender finds the frame number in its trailing digits."""
    return f"{prefix}_{frame:06d}.png"
