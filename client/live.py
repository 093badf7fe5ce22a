"""LiveController: a host editor's connection to a MegaLive server, driven from the host's UI tick.

Shared by the Blender extension (a bpy timer) and the Unreal bridge (Slate's post-tick): both ship a
byte-identical copy of this file beside their copies of ``protocol.py`` and ``client.py``, so it
depends only on the standard library, pyzmq and those two modules (no numpy, no torch, no models).

User commands (``connect``, ``start_live``, ``connect_and_start_live``) may block up to the client
timeout; ``tick()`` never does. In the ``live`` phase the tick calls only ``client.poll(timeout_ms=0)``,
``client.can_send`` and ``client.send_frame`` -- the latter only while the client holds a socket and
no session needs reopening, the two cases where it would do a blocking hello/open. Anything needing
a round trip (reconnect + reopen, or a first open the server was not there for) runs on a background
thread, during which the tick does not touch the client at all; attempts back off exponentially. The
worker never touches host data: it owns only the client.

Phases (``phase``; hosts map them to their own labels): "disconnected", "connected" (hello done, not
live), "live", "gone" (server gone, waiting to retry), "reconnecting" (worker running), "refused" (the
server said no, e.g. unknown avatar, or a CURVE key file cannot be used; terminal).

One file on purpose (about 500 lines): the controller's phases, its background reconnect and its status are
one state machine that both hosts drive through a single tick().
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

from . import client as client_module
from . import protocol

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
PHASES = ("disconnected", "connected", "live", "gone", "reconnecting", "refused")


class DriverError(ValueError):
    """A driver source cannot be read (missing folder, unreadable clip, no frames)."""


class DriverSource(Protocol):
    """Driver frames for the tick; both methods run on the host's UI thread and must not wait long.

    Split in two so the tick asks for a payload (which may cost a file read or a render) only when
    it will actually send it."""

    def frame_key(self) -> Hashable | None:
        """Something cheap that changes when the driver frame changes (a frame number); None: no frame yet."""
        ...

    def payload(self, key: Hashable) -> protocol.Buffer:
        """The driver frame for ``key``: an encoded image, an H×W×3 uint8 RawBuffer, or ARKit curves."""
        ...


class ImageSequenceFiles:
    """PNG/JPEG frames sorted by name: a folder, or one chosen file (its folder, or that file alone).

    Index i is the i-th file, looped. Files go to the server as they are (it decodes them), so the
    tick only reads bytes from disk; reads are cached up to ``max_cached_bytes``."""

    def __init__(
        self, path: str | os.PathLike[str], *, file_means_its_folder: bool = True, max_cached_bytes: int = 256 * 1024 * 1024
    ) -> None:
        path = Path(path)
        if not path.exists():
            raise DriverError(f"image sequence {path}: no such folder")
        if path.is_dir() or file_means_its_folder:
            folder = path if path.is_dir() else path.parent
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            folder, files = path.parent, [path]
        else:
            raise DriverError(f"{path} is neither a folder of PNG/JPEG frames nor a PNG/JPEG file")
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

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0


@dataclass(frozen=True)
class LiveConfig:
    server: str = client_module.DEFAULT_ADDRESS
    client_name: str = "megalive-live"  # the hello's client name; also names the reconnect thread
    timeout_s: float = 2.0  # user-command wait; also how long a frame may stay unanswered
    max_in_flight: int = 2
    reconnect_delay_s: float = 0.5  # first back-off after the server is gone; doubles per failure
    max_reconnect_delay_s: float = 5.0
    resend_still_s: float = 1.0  # resend an unchanged frame this often: an unanswered frame is how a gone server shows
    figures_window: int = 30  # textures the fps / latency figures average over
    # CURVE, for a server on another host: pyzmq certificate files (``megalive keys``); both empty = plain TCP.
    server_public_key: str = ""  # the server's NAME.key
    client_secret_key: str = ""  # this client's NAME.key_secret (its public half must be on the server's allow-list)


def curve_keys(config: LiveConfig) -> client_module.CurveClientKeys | None:
    """The CURVE keys ``config`` names, or None when it names none. Raises client.CurveKeyError (one line)."""
    server_key, client_key = config.server_public_key.strip(), config.client_secret_key.strip()
    if not server_key and not client_key:
        return None
    if not server_key:
        raise client_module.CurveKeyError("CURVE needs the server's public key file too (its NAME.key)")
    if not client_key:
        raise client_module.CurveKeyError("CURVE needs this client's secret key file too (its NAME.key_secret)")
    return client_module.load_curve_client_keys(server_public_key=server_key, client_secret_key=client_key)


def new_client(config: LiveConfig, *, name: str | None = None, max_in_flight: int | None = None) -> client_module.AvatarClient:
    """A client for ``config``'s server (with its CURVE keys). Raises client.CurveKeyError for a bad key file."""
    return client_module.AvatarClient(
        address=config.server,
        name=config.client_name if name is None else name,
        timeout_s=config.timeout_s,
        max_in_flight=config.max_in_flight if max_in_flight is None else max_in_flight,
        curve=curve_keys(config),
    )


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


@dataclass(frozen=True)
class SessionRequest:
    """What ``open`` asks for; kept while the first open is retried in the background."""

    avatar: int
    driver: str = "image"
    size: tuple[int, int] | None = None  # (height, width); None: the model's resolution
    stabilise: bool | None = None  # the server's One-Euro filters: None = its defaults, False = off
    # "auto": frames go whole, at their own aspect, and the server finds and cuts the square face crop (video, movie
    # clips, camera renders); "none": the frame is the face crop already (one of another aspect is centre-cut, never
    # stretched).
    crop: str = "none"


class LiveController:
    def __init__(
        self, *, config: LiveConfig, client: client_module.AvatarClient | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._key_error = ""  # a CURVE key file that cannot be used: every connect says so, none is tried
        if client is None:
            try:
                client = new_client(config)
            except client_module.CurveKeyError as error:
                self._key_error = str(error)
                client = client_module.AvatarClient(
                    address=config.server, name=config.client_name, timeout_s=config.timeout_s, max_in_flight=config.max_in_flight
                )
        self.client = client
        self.figures = LiveFigures(received_at=deque(maxlen=config.figures_window), round_trip_ms=deque(maxlen=config.figures_window))
        self.avatars: list[client_module.AvatarEntry] = []
        self._clock = clock
        self._phase = "disconnected"
        self._detail = ""
        self._session: int | None = None
        self._pending_open: SessionRequest | None = None  # connect_and_start_live: open once the server is there
        self._last_sent_key: Hashable | None = None
        self._last_sent_at = float("-inf")
        self._delay_s = config.reconnect_delay_s
        self._next_attempt = 0.0
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None
        self._worker_session: int | None = None
        self._closed = False
        self._frame_error = ""  # the last frame's error (e.g. no face yet) until a texture comes again
        if self._key_error:
            self._set("refused", self._key_error)

    # ------------------------------------------------------------------------------ state

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def detail(self) -> str:
        """Why the phase is what it is (the error, the server), or the last frame/driver error; may be empty."""
        return self._detail

    @property
    def frame_error(self) -> str:
        """The newest per-frame error ("code: message", e.g. no face found yet under crop "auto") since the last
        texture; empty once textures come again. The live loop goes on either way: hosts show it."""
        return self._frame_error

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def is_live(self) -> bool:
        """A live session exists or is being opened (it may be reconnecting)."""
        return self._session is not None or self._pending_open is not None

    @property
    def worker_running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    # ------------------------------------------------------------------------------ user commands (may block)

    def connect(self) -> bool:
        """hello + avatars, waiting at most the client timeout. False (and a detail) when it fails."""
        if self.worker_running:
            self._detail = "a reconnect attempt is still running"
            return False
        if self._key_error:
            self._set("refused", self._key_error)
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

    def start_live(
        self, *, avatar: int, size: tuple[int, int] | None = None, driver: str = "image", stabilise: bool | None = None, crop: str = "none"
    ) -> bool:
        """Open the live session after ``connect`` (blocking, at most the client timeout). ``crop``: see SessionRequest.

        False (and a detail) when it fails; a refused open leaves the controller connected, to pick again."""
        if self._phase not in ("connected", "live") or self.worker_running:
            self._detail = "connect first"
            return False
        if self._session is not None:
            self.stop_live()
        try:
            self._session = self._open(SessionRequest(avatar=avatar, driver=driver, size=size, stabilise=stabilise, crop=crop))
        except client_module.ServerGoneError as error:
            self._server_gone(str(error))
            self._session = None
            return False
        except client_module.ServerError as error:
            self._set("connected", f"open refused: {error.message}")
            return False
        self._went_live("")
        return True

    def connect_and_start_live(
        self, *, avatar: int, size: tuple[int, int] | None = None, driver: str = "image", stabilise: bool | None = None, crop: str = "none"
    ) -> bool:
        """hello + open in one user command (blocking, at most the client timeout).

        A server that cannot be reached yet is retried in the background like a lost one; a refusal
        (hello or open) is terminal. False when not live yet."""
        if self._key_error:
            self._set("refused", self._key_error)
            return False
        if self._phase != "disconnected" or self.worker_running:
            self._detail = "already connected"
            return False
        request = SessionRequest(avatar=avatar, driver=driver, size=size, stabilise=stabilise, crop=crop)
        self._pending_open = request
        try:
            self.client.hello()
            session = self._open(request)
        except client_module.ServerGoneError as error:
            self._server_gone(str(error))
            return False
        except zmq.ZMQError as error:
            self._pending_open = None
            self._set("disconnected", f"bad server address {self.config.server!r}: {error}")
            return False
        except client_module.ServerError as error:
            self._refuse(error.message)
            return False
        self._pending_open = None
        self._session = session
        self._went_live("")
        return True

    def stop_live(self) -> None:
        """Close the live session (best effort; a gone server is not waited for)."""
        session, self._session = self._session, None
        self._pending_open = None
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
        self._pending_open = None
        self._set("disconnected", "")

    # ------------------------------------------------------------------------------ tick (never blocks)

    def tick(self, source: DriverSource | None) -> client_module.Texture | None:
        """Drain replies, send the current driver frame when the window allows; return the newest texture
        (older ones of the same tick were superseded)."""
        if self._phase == "live":
            return self._tick_live(source)
        if self._phase == "reconnecting":
            self._collect_worker()
        elif self._phase == "gone" and self.is_live and self._clock() >= self._next_attempt:
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
                    if self._frame_error:  # e.g. the face is back: the frame error's message is old news
                        self._frame_error = ""
                        if self._detail.startswith("frame error: "):
                            self._detail = ""
                    self.figures.textures += 1
                    self.figures.received_at.append(event.received_at)
                    self.figures.round_trip_ms.append(event.round_trip_ms)
                elif isinstance(event, client_module.FrameDropped):
                    self.figures.dropped += 1
                else:
                    self.figures.frame_errors += 1
                    if event.code == client_module.SERVER_GONE:
                        continue  # a frame lost with the connection: the phase already said the server was gone
                    if event.code == "unknown_session":
                        # The server restarted behind the same address: a send now would reopen (a blocking
                        # round trip), so hand the reopen to the background worker instead.
                        self._server_gone(f"the server forgot the session ({event.message})", immediately=True)
                        return newest
                    # One frame refused (no face yet, a frame too large...): said, and the next frame goes as usual.
                    self._frame_error = f"{event.code}: {event.message}"
                    self._detail = f"frame error: {self._frame_error}"
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

    # ------------------------------------------------------------------------------ (re)connection (background)

    def _open(self, request: SessionRequest) -> int:
        return self.client.open(
            avatar=request.avatar,
            driver=request.driver,
            size=request.size,
            output_format="rgba8",
            crop=request.crop,
            stabilise=request.stabilise,
        )

    def _start_worker(self) -> None:
        self._phase = "reconnecting"
        self._worker_error = None
        self._worker_session = None
        # No session yet (connect_and_start_live found no server): the worker does the first hello + open.
        first_open = self._pending_open if self._session is None else None
        self._worker = threading.Thread(
            target=self._reconnect_in_background, args=(first_open,), name=f"{self.config.client_name}-reconnect", daemon=True
        )
        self._worker.start()

    def _reconnect_in_background(self, first_open: SessionRequest | None) -> None:
        try:
            if first_open is None:
                self.client.reconnect()  # hello + reopen of the live session, same handle
            else:
                self.client.hello()
                self._worker_session = self._open(first_open)
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
            if self._worker_session is not None and self._pending_open is not None:
                self._session, self._pending_open = self._worker_session, None
            if self._session is None:  # stop_live() ran while the worker was at it
                self._set("connected", "")
                return
            self.figures.reconnects += 1
            self._went_live(f"reconnected ({self.figures.reconnects})")
        elif isinstance(error, client_module.ServerError):
            self._refuse(f"{error.code}: {error.message}")
        else:
            self._server_gone(str(error))

    def _went_live(self, detail: str) -> None:
        self._last_sent_key = None  # resend the current frame to the (possibly new) session
        self._frame_error = ""
        self._delay_s = self.config.reconnect_delay_s
        self._set("live", detail)

    def _refuse(self, why: str) -> None:
        # e.g. unknown_avatar: the (restarted) server has no such avatar; retrying will not help.
        self._session = None
        self._pending_open = None
        self.client.close()
        self._set("refused", why)

    def _server_gone(self, why: str, *, immediately: bool = False) -> None:
        self._set("gone", why)
        self._next_attempt = self._clock() + (0.0 if immediately else self._delay_s)
        if not immediately:
            self._delay_s = min(self._delay_s * 2, self.config.max_reconnect_delay_s)

    def _set(self, phase: str, detail: str) -> None:
        self._phase = phase
        self._detail = detail


# ------------------------------------------------------------------------------------------------
# One frame at a time, waiting for it (a user command such as a bake, never the tick)


class RenderError(RuntimeError):
    """A frame could not be rendered (server gone, refused, timed out)."""


def render_one_frame(
    client: client_module.AvatarClient, session: int, payload: protocol.Buffer, *, timeout_s: float, timestamp: float | None = None
) -> client_module.Texture:
    """Send one driver frame and wait (at most timeout_s) for its texture, in the session's format.

    ``timestamp``: the frame's capture time in seconds (a bake passes its scene time, so the server's
    filters see the animation's timing, not the bake's speed); None: now."""
    try:
        seq = client.send_frame(session, payload, timestamp=timestamp)
        if seq is None:
            raise RenderError("the in-flight window is full (a previous frame is still unanswered)")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in client.poll(timeout_ms=50):
                if event.seq != seq:
                    continue
                if isinstance(event, client_module.Texture):
                    return event
                if isinstance(event, client_module.FrameError):
                    raise RenderError(f"{event.code}: {event.message}")
                raise RenderError("the server dropped the frame")  # cannot happen with one frame in flight
    except client_module.ServerGoneError as error:
        raise RenderError(str(error)) from None
    except client_module.ServerError as error:
        raise RenderError(f"{error.code}: {error.message}") from None
    raise RenderError(f"no texture within {timeout_s:.1f} s")
