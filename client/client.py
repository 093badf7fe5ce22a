"""AvatarClient: the MegaLive client over a ZeroMQ DEALER socket (protocol v1, DESIGN §3).

Depends on pyzmq and protocol.py only (numpy optional): the Blender extension and the Unreal bridge
ship copies of these two files. Not thread-safe: use one client per thread.

    client = AvatarClient(address="tcp://127.0.0.1:5555")
    client.hello()
    session = client.open(avatar=0)
    client.send_frame(session, frame)          # non-blocking; None when the in-flight window is full
    for event in client.poll(timeout_ms=5):    # Texture, FrameDropped or FrameError
        ...

Every wait has a timeout. When the server is gone a ServerGoneError says so, and every frame still in
flight ends in a FrameError(code="server_gone") that the next poll() returns; the next call
reconnects and reopens the client's sessions with the same handles once the server is back.

A server on another host is reached over CURVE: ``AvatarClient(curve=load_curve_client_keys(...))``
with the server's public key and this client's key pair (pyzmq certificate files).

One file on purpose (about 700 lines): the hosts ship it as one vendored module beside protocol.py, and
its connection, request, event and CURVE-handshake code share one socket's state.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from . import protocol
from .protocol import Buffer, EncodedBuffer, Message, RawBuffer

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
SERVER_GONE = "server_gone"  # FrameError code of a frame that was in flight when the server went away

# The handshake outcomes the DEALER's monitor reports (the rest of its events are not needed).
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class ServerGoneError(ConnectionError):
    """The server did not answer in time, cannot be reached, or refused the connection's handshake."""


class ServerError(RuntimeError):
    """The server answered a request with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CurveKeyError(ValueError):
    """A CURVE key file is missing, unreadable or holds no valid key (one line naming the file)."""


@dataclass(frozen=True)
class CurveClientKeys:
    """What a client needs to reach a CURVE server: its public key and this client's key pair (Z85)."""

    server_public: bytes  # Z85, 40 bytes: the server's public key
    public: bytes  # Z85: this client's public key (the server's allow-list holds it)
    secret: bytes  # Z85: this client's secret key

    def __post_init__(self) -> None:
        for name in ("server_public", "public", "secret"):
            if not _is_z85_key(getattr(self, name)):
                raise CurveKeyError(f"the CURVE {name.replace('_', ' ')} key is not 40 Z85 characters")

    def __repr__(self) -> str:  # never print the secret key into a log
        return f"CurveClientKeys(server_public={self.server_public!r}, public={self.public!r}, secret=<hidden>)"


def _is_z85_key(key: object) -> bool:
    if not isinstance(key, bytes) or len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):  # a character outside the Z85 alphabet
        return False


def _read_certificate(path: str | os.PathLike[str], *, role: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) of a pyzmq certificate file; CurveKeyError names the file otherwise."""
    shown = os.path.expanduser(os.fspath(path))
    if not shown:
        raise CurveKeyError(f"{role}: no key file given")
    if not os.path.exists(shown):
        raise CurveKeyError(f"{role} {shown}: no such file")
    if not os.path.isfile(shown):
        raise CurveKeyError(f"{role} {shown}: not a file")
    try:
        public, secret = zmq.auth.load_certificate(shown)
    except OSError as error:
        raise CurveKeyError(f"{role} {shown}: cannot read it ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError):
        raise CurveKeyError(f"{role} {shown}: not a CURVE certificate (no public-key line)") from None
    if not _is_z85_key(public):
        raise CurveKeyError(f"{role} {shown}: its public key is not 40 Z85 characters")
    if secret is not None and not _is_z85_key(secret):
        raise CurveKeyError(f"{role} {shown}: its secret key is not 40 Z85 characters")
    return public, secret


def load_curve_client_keys(*, server_public_key: str | os.PathLike[str], client_secret_key: str | os.PathLike[str]) -> CurveClientKeys:
    """The keys of a CURVE client from pyzmq certificate files (``zmq.auth.create_certificates``).

    ``server_public_key``: the server's NAME.key (its NAME.key_secret works too: only the public key is
    read). ``client_secret_key``: this client's NAME.key_secret, which holds both halves of its pair.
    Raises CurveKeyError with one line naming the file that is wrong."""
    if not zmq.has("curve"):
        raise CurveKeyError("this pyzmq build has no CURVE support (libzmq without libsodium)")
    server_public, _ = _read_certificate(server_public_key, role="server public key")
    public, secret = _read_certificate(client_secret_key, role="client secret key")
    if secret is None:
        raise CurveKeyError(f"client secret key {os.fspath(client_secret_key)}: it holds no secret key (give the .key_secret file)")
    return CurveClientKeys(server_public=server_public, public=public, secret=secret)


@dataclass(frozen=True)
class ServerInfo:
    server: str
    protocol: int
    models: list[dict[str, Any]]
    capabilities: dict[str, Any]
    limits: dict[str, Any]
    engine: dict[str, Any] = field(default_factory=dict)  # {"alive": bool, "restarts": int} from servers that say


@dataclass(frozen=True)
class AvatarEntry:
    id: int
    name: str
    model: str
    thumbnail: RawBuffer | None  # h×w×3 uint8; .array() gives numpy when it is installed


@dataclass(frozen=True)
class EnrolledAvatar:
    """The server's answer to `enroll`: the new avatar, at once usable in `open`."""

    avatar: int  # its id
    name: str
    frames: int  # the portraits it was embedded from
    notes: tuple[str, ...]  # e.g. several faces in a portrait (the largest was taken)
    seconds: float  # the server's time to make and store it
    refinement_job: int | None = None  # the few-shot refinement running in the background (its progress: `stats`)
    refinement_unavailable: str | None = None  # why no refinement runs though steps were asked for (e.g. no torch)


@dataclass(frozen=True)
class Texture:
    """A rendered frame. ``buffer`` is RawBuffer (rgba8/rgb8, H×W×C) or EncodedBuffer (jpeg, png)."""

    session: int
    seq: int
    buffer: Buffer
    timings: dict[str, float]
    sent_at: float
    received_at: float
    face_found: bool | None = None  # crop "auto": False when no face was found and the last crop was reused
    landmarks: list[list[float]] | None = None  # crop "auto" with landmarks=True: 68 [x, y] in [0, 1] over the crop
    c2pa: bool | None = None  # png: whether the server signed it with a C2PA manifest (None for other formats)

    @property
    def round_trip_ms(self) -> float:
        return 1000.0 * (self.received_at - self.sent_at)


@dataclass(frozen=True)
class FrameDropped:
    """The server rendered a newer frame of the session instead of this one (latest wins)."""

    session: int
    seq: int


@dataclass(frozen=True)
class FrameError:
    """A frame that ended without a texture: the server's error code, or SERVER_GONE (client-side)."""

    session: int
    seq: int
    code: str
    message: str


Event = Texture | FrameDropped | FrameError


@dataclass
class _SessionState:
    open_fields: dict[str, Any]
    server_id: int
    token: str | None = None  # the open reply's token; every frame and close carries it (None: a server without tokens)
    next_seq: int = 0
    in_flight: dict[int, float] = field(default_factory=dict)  # request id -> sent at (monotonic)
    needs_reopen: bool = False
    # Since when the session has been owed a texture or an error: set by the first frame sent after the
    # last one; a `dropped` reply is not progress (a server whose engine died drops every frame).
    waiting_since: float | None = None
    dropped_while_waiting: int = 0

    def session_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"session": self.server_id}
        if self.token is not None:
            fields["token"] = self.token
        return fields


def _token_of(reply: Message) -> str | None:
    token = reply.get("token")
    return token if isinstance(token, str) else None


class AvatarClient:
    def __init__(
        self,
        *,
        address: str = DEFAULT_ADDRESS,
        name: str = "megalive-client",
        timeout_s: float = 2.0,
        max_in_flight: int = 2,
        limits: protocol.Limits = protocol.DEFAULT_LIMITS,
        context: zmq.Context | None = None,
        curve: CurveClientKeys | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.address = address
        self.name = name
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.limits = limits
        self.context = context or zmq.Context.instance()
        self.curve = curve
        self.server_info: ServerInfo | None = None
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None  # handshake events of _socket
        self._failed_handshakes = 0  # in a row, without detail (a wrong server key looks like this)
        self._next_request_id = 1
        self._sessions: dict[int, _SessionState] = {}
        self._next_handle = 1
        self._frame_requests: dict[int, tuple[int, int]] = {}  # request id -> (session handle, seq)
        self._events: deque[Event] = deque()

    # -------------------------------------------------------------------------------- connection

    @property
    def connected(self) -> bool:
        return self._socket is not None

    def _connect(self) -> zmq.Socket:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)  # unsent frames to a dead server are not worth a hang at close
        socket.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a server that is not there: sends fail fast
        socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        socket.setsockopt(zmq.RCVHWM, 64)
        socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        socket.setsockopt(zmq.RECONNECT_IVL, 100)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if "[" in self.address:
            socket.setsockopt(zmq.IPV6, 1)  # tcp://[::1]:PORT: libzmq connects over IPv4 only unless told
        if self.curve is not None:
            socket.setsockopt(zmq.CURVE_SERVERKEY, self.curve.server_public)
            socket.setsockopt(zmq.CURVE_PUBLICKEY, self.curve.public)
            socket.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)
        try:
            # Before connect, so the first handshake is seen: a refused one never makes the socket
            # writable (IMMEDIATE), and without the monitor it would only show as a timeout.
            # A name of its own: a closed socket's may stay bound a moment, and a host can load two copies of this module.
            self._monitor = socket.get_monitor_socket(events=_HANDSHAKE_EVENTS, addr=f"inproc://megalive-client-{uuid.uuid4().hex}")
            self._failed_handshakes = 0
            socket.connect(self.address)
        except zmq.ZMQError:
            self._close_socket(socket)
            raise
        self._socket = socket
        return socket

    def _close_socket(self, socket: zmq.Socket) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                socket.disable_monitor()
            except zmq.ZMQError:
                pass  # the socket is being closed anyway; its monitor goes with it
            monitor.close(linger=0)
        socket.close(linger=0)

    def _drop_socket(self, *, why: str = "") -> None:
        """Close the socket. With ``why`` (the server is gone) every frame still in flight of an open
        session ends in a FrameError(SERVER_GONE) that the next poll() returns; its reply, should it
        ever come, is ignored (its request id is forgotten)."""
        if self._socket is not None:
            self._close_socket(self._socket)
            self._socket = None
        if why:
            for request_id in sorted(self._frame_requests):
                handle, seq = self._frame_requests[request_id]
                if handle in self._sessions:
                    self._events.append(FrameError(session=handle, seq=seq, code=SERVER_GONE, message=why))
        self._frame_requests.clear()
        for state in self._sessions.values():
            state.in_flight.clear()
            state.waiting_since = None
            state.dropped_while_waiting = 0
            state.needs_reopen = True

    def _gone(self, message: str) -> ServerGoneError:
        """Drop the socket because the server is gone; the error to raise."""
        self._drop_socket(why=message)
        return ServerGoneError(message)

    def _ensure_connected(self) -> zmq.Socket:
        if self._socket is None:
            self._connect()
            self.hello()
            for state in self._sessions.values():
                if state.needs_reopen:
                    self._reopen(state)
        assert self._socket is not None
        return self._socket

    def reconnect(self) -> ServerInfo:
        """Drop the connection and connect again: hello, then reopen every session of this client."""
        self._drop_socket(why=f"dropped the connection to {self.address} to reconnect")
        self._ensure_connected()
        assert self.server_info is not None
        return self.server_info

    def close(self) -> None:
        """Close every session (best effort, without waiting long) and the socket."""
        if self._socket is not None:
            for handle in list(self._sessions):
                state = self._sessions.pop(handle)
                if not state.needs_reopen:
                    self._send({"op": "close", "id": self._new_request_id(), **state.session_fields()}, (), wait_s=0.0, raise_gone=False)
        self._sessions.clear()
        self._drop_socket()
        self._events.clear()  # a closed client has no sessions to report on

    def __enter__(self) -> AvatarClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------- handshake monitor

    def _wait(self, socket: zmq.Socket, flag: int, wait_s: float) -> bool:
        """Wait at most wait_s for the socket to be ready (POLLIN/POLLOUT). A handshake the server
        refused meanwhile raises ServerGoneError at once instead of ending as a timeout."""
        monitor = self._monitor
        if monitor is None:
            return bool(socket.poll(int(wait_s * 1000), flag))
        poller = zmq.Poller()
        poller.register(socket, flag)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + wait_s
        while True:
            ready = dict(poller.poll(max(0, int((deadline - time.monotonic()) * 1000))))
            if monitor in ready:
                self._read_handshake_events(monitor)
            if socket in ready:
                return True
            if time.monotonic() >= deadline:
                return False

    def _read_handshake_events(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0, zmq.POLLIN):
            event = parse_monitor_message(monitor.recv_multipart())
            kind, value = event["event"], int(event["value"])
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._failed_handshakes = 0
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # the server's allow-list does not hold our key
                raise self._gone(
                    f"the server at {self.address} refused this client's CURVE key "
                    f"(status {value}: its public key is not on the server's allow-list)"
                )
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                raise self._gone(self._protocol_failure(value))
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # A server that cannot decrypt our hello (we hold a wrong key for it) just closes the connection;
                # so may a CURVE server that a plain client reaches, before the mismatch is reported. Twice in a
                # row, not once: a server killed mid-handshake looks the same once.
                self._failed_handshakes += 1
                if self._failed_handshakes >= 2:
                    raise self._gone(
                        f"the server at {self.address} refused this client's CURVE handshake: check the server's public key"
                        if self.curve is not None
                        else f"the server at {self.address} ends every handshake: it may require CURVE "
                        "(give the server's public key and this client's secret key)"
                    )

    def _protocol_failure(self, value: int) -> str:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if self.curve is None:
                return f"the server at {self.address} requires CURVE: give the server's public key and this client's secret key"
            return f"the server at {self.address} does not use CURVE: leave the CURVE key files empty"
        return f"the handshake with {self.address} failed (ZMTP protocol error {value:#x}){self._key_hint()}"

    def _key_hint(self) -> str:
        """A wrong server key shows as no answer at all (the server cannot read us): say so under CURVE."""
        return "; check the server's public key" if self.curve is not None else ""

    # -------------------------------------------------------------------------------- sending

    def _new_request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id += 1
        return request_id

    def _send(self, header: dict[str, Any], buffers: tuple[Buffer, ...], *, wait_s: float, raise_gone: bool = True) -> bool:
        """Send one message, waiting at most wait_s for the connection to accept it."""
        socket = self._socket
        assert socket is not None
        frames = protocol.encode(header, buffers)
        if wait_s > 0 and not self._wait(socket, zmq.POLLOUT, wait_s):
            if raise_gone:
                raise self._gone(f"server at {self.address} is not reachable{self._key_hint()}")
            return False
        try:
            # copy=False: pyzmq copies frames under 64 KiB and sends larger ones zero-copy.
            socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if raise_gone:
                raise self._gone(f"server at {self.address} is not reachable{self._key_hint()}") from None
            return False
        return True

    def _request(self, header: dict[str, Any], buffers: tuple[Buffer, ...] = ()) -> Message:
        """Send a request and wait (at most timeout_s) for its reply; frame replies meanwhile are queued."""
        self._ensure_connected()
        return self._request_connected(header, buffers)

    def _request_connected(self, header: dict[str, Any], buffers: tuple[Buffer, ...] = ()) -> Message:
        request_id = self._new_request_id()
        deadline = time.monotonic() + self.timeout_s
        self._send({**header, "id": request_id}, buffers, wait_s=self.timeout_s)
        while True:
            remaining = deadline - time.monotonic()
            reply = self._receive(max(0.0, remaining)) if remaining > 0 else None
            if reply is None:
                if time.monotonic() >= deadline:
                    raise self._gone(f"no reply from {self.address} within {self.timeout_s:.1f} s ({header['op']}){self._key_hint()}")
                continue
            if reply.request_id == request_id:
                if reply.op == "error":
                    raise ServerError(str(reply.get("code")), str(reply.get("message")))
                return reply
            self._dispatch(reply)

    # -------------------------------------------------------------------------------- receiving

    def _receive(self, wait_s: float) -> Message | None:
        """One message from the server, or None when nothing came within wait_s."""
        socket = self._socket
        if socket is None or not self._wait(socket, zmq.POLLIN, wait_s):
            return None
        frames = socket.recv_multipart(copy=False)
        try:
            return protocol.decode([frame.buffer for frame in frames], self.limits)
        except protocol.ProtocolError as error:
            if error.code == "unsupported_version":
                # Not a timeout: the server is there but speaks another protocol. Say so, and do not retry.
                raise ServerError("unsupported_version", f"the server at {self.address} speaks another protocol: {error.message}") from None
            return None  # a reply we cannot read is as good as none; the request times out if it was ours

    def _dispatch(self, reply: Message) -> None:
        """Turn a frame reply (texture / dropped / error) into an event; ignore stale replies."""
        key = self._frame_requests.pop(reply.request_id, None)
        if key is None:
            return
        handle, seq = key
        state = self._sessions.get(handle)
        if state is None:
            return
        now = time.monotonic()
        sent_at = state.in_flight.pop(reply.request_id, now)
        if reply.op == "dropped":
            state.dropped_while_waiting += 1  # not progress: the session still waits for a texture
            self._events.append(FrameDropped(session=handle, seq=seq))
            return
        if reply.op not in ("texture", "error"):
            return
        # A texture or an error is an answer: the server is working on this session.
        state.waiting_since = now if state.in_flight else None
        state.dropped_while_waiting = 0
        if reply.op == "texture":
            if not reply.buffers:
                self._events.append(
                    FrameError(session=handle, seq=seq, code="internal", message="the server sent a texture without pixels")
                )
                return
            timings = reply.get("timings") or {}
            face_found, landmarks, signed = reply.get("face_found"), reply.get("landmarks"), reply.get("c2pa")
            self._events.append(
                Texture(
                    session=handle,
                    seq=seq,
                    buffer=reply.buffers[0],
                    timings=timings,
                    sent_at=sent_at,
                    received_at=now,
                    face_found=face_found if isinstance(face_found, bool) else None,
                    landmarks=landmarks if isinstance(landmarks, list) else None,
                    c2pa=signed if isinstance(signed, bool) else None,
                )
            )
        else:
            code = str(reply.get("code"))
            if code == "unknown_session":
                state.needs_reopen = True  # the server restarted under us; reopen before the next frame
            self._events.append(FrameError(session=handle, seq=seq, code=code, message=str(reply.get("message"))))

    def poll(self, timeout_ms: int = 0) -> list[Event]:
        """Every event that has arrived, waiting at most timeout_ms for the first one.

        Raises ServerGoneError when a session has waited longer than timeout_s for a texture or an
        error (`dropped` replies do not count); the events that arrived stay queued for the next poll,
        with a FrameError(SERVER_GONE) for each frame that was still in flight."""
        if self._socket is not None:
            wait_s = timeout_ms / 1000.0 if not self._events else 0.0
            while (reply := self._receive(wait_s)) is not None:
                self._dispatch(reply)
                wait_s = 0.0
        self._check_progress()
        events = list(self._events)
        self._events.clear()
        return events

    def _check_progress(self) -> None:
        now = time.monotonic()
        for state in self._sessions.values():
            if state.waiting_since is not None and now - state.waiting_since > self.timeout_s:
                if state.dropped_while_waiting and not state.in_flight:
                    why = "the server drops every frame (its engine may have stopped)"
                elif state.dropped_while_waiting:
                    why = "the server drops every frame or is stuck"
                else:
                    why = "the server is gone or stuck"
                # No key hint here: the session was opened, so the handshake worked.
                raise self._gone(f"no texture from {self.address} for {self.timeout_s:.1f} s: {why}")

    # -------------------------------------------------------------------------------- operations

    def hello(self) -> ServerInfo:
        if self._socket is None:
            self._connect()
        reply = self._request_connected({"op": "hello", "client": self.name, "versions": [protocol.PROTOCOL_VERSION]})
        self.server_info = ServerInfo(
            server=str(reply.get("server")),
            protocol=int(reply.get("protocol", 0)),
            models=_list_of(reply.get("models")),
            capabilities=_map_of(reply.get("capabilities")),
            limits=_map_of(reply.get("limits")),
            engine=_map_of(reply.get("engine")),
        )
        return self.server_info

    def avatars(self) -> list[AvatarEntry]:
        reply = self._request({"op": "avatars"})
        entries = []
        for entry in reply.get("avatars") or []:
            thumbnail = entry.get("thumbnail")
            buffer = reply.buffers[thumbnail["buffer"]] if isinstance(thumbnail, dict) else None
            entries.append(
                AvatarEntry(
                    id=int(entry["id"]),
                    name=str(entry["name"]),
                    model=str(entry.get("model", "")),
                    thumbnail=buffer if isinstance(buffer, RawBuffer) else None,
                )
            )
        return entries

    def enroll(self, *, name: str, consent: str, portraits: list[Any], refine_steps: int | None = None) -> EnrolledAvatar:
        """Send portraits (H×W×3 uint8 arrays, or EncodedBuffer PNG/JPEG files) of one person with a name and the
        consent statement of the person shown; returns the new avatar. ServerError when the server refuses (no
        consent, a name in use, no face found, a model that cannot enroll). ``refine_steps``: the few-shot refinement
        that follows in the background (None: the server's default; 0: none)."""
        buffers = tuple(p if isinstance(p, EncodedBuffer) else protocol.raw_buffer_from_array(p) for p in portraits)
        fields: dict[str, Any] = {"op": "enroll", "name": name, "consent": consent}
        if refine_steps is not None:
            fields["refine_steps"] = refine_steps
        reply = self._request(fields, buffers)
        refinement = reply.get("refinement") if isinstance(reply.get("refinement"), dict) else {}
        job, unavailable = refinement.get("job"), refinement.get("unavailable")
        return EnrolledAvatar(
            avatar=int(reply.get("avatar", -1)),
            name=str(reply.get("name", name)),
            frames=int(reply.get("frames", len(portraits))),
            notes=tuple(str(note) for note in reply.get("notes") or ()),
            seconds=float(reply.get("seconds", 0.0)),
            refinement_job=job if isinstance(job, int) else None,
            refinement_unavailable=str(unavailable) if unavailable else None,
        )

    def refinement_jobs(self) -> list[dict[str, Any]]:
        """The server's refinement jobs (`stats`): job, avatar, name, state (queued/running/done/failed/cancelled),
        step of steps, loss, seconds, error."""
        refinement = self._request({"op": "stats"}).get("refinement")
        jobs = refinement.get("jobs") if isinstance(refinement, dict) else None
        return [job for job in jobs or () if isinstance(job, dict)]

    def follow_refinement(self, job: int, *, poll_s: float = 1.0, stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """The refinement job's entry in `stats` every ``poll_s`` seconds until it has ended: the last one yielded is done,
        failed, cancelled, or ``{"state": "gone"}`` when the server no longer knows the job. ``stop`` set ends the wait
        early (the caller then decides what to do, e.g. cancel it)."""
        while True:
            entry = next((j for j in self.refinement_jobs() if j.get("job") == job), {"job": job, "state": "gone"})
            yield entry
            if entry.get("state") not in ("queued", "running"):
                return
            if stop is None:
                time.sleep(poll_s)
            elif stop.wait(poll_s):
                return

    def cancel_refinement(self, job: int) -> bool:
        """Stop a refinement job (the avatar stays as enrolled one-shot); False when it had already ended."""
        return bool(self._request({"op": "cancel_refinement", "job": job}).get("cancelled"))

    def open(
        self,
        *,
        avatar: int,
        driver: str = "image",
        size: tuple[int, int] | None = None,
        output_format: str = "rgba8",
        crop: str = "none",
        landmarks: bool = False,
        stabilise: bool | dict[str, Any] | None = None,
        retarget: bool = False,
    ) -> int:
        """Open a session; returns a client-side handle that stays valid across reconnects.

        ``driver``: image | arkit | landmarks. ``crop="auto"``: the server finds and aligns the face in
        full image frames (``landmarks=True`` returns the 68 points it found with each texture).
        ``stabilise``: the server's One-Euro filters: None = server defaults, False = off, or a map
        ``{"pose"|"expression"|"box": {"min_cutoff_hz": .., "beta": ..} | False}``. ``retarget`` (landmark-driven models,
        image and landmarks drivers): the session's first frame is the performer's neutral face, and every frame moves the
        avatar's own face by the performer's displacement from it (cross-driving without the performer's face shape)."""
        fields: dict[str, Any] = {"op": "open", "avatar": avatar, "driver": driver, "format": output_format, "crop": crop}
        if size is not None:
            fields["size"] = [int(size[0]), int(size[1])]
        if landmarks:
            fields["landmarks"] = True
        if stabilise is not None:
            fields["filter"] = stabilise
        if retarget:
            fields["retarget"] = True
        reply = self._request(fields)
        handle = self._next_handle
        self._next_handle += 1
        self._sessions[handle] = _SessionState(open_fields=fields, server_id=int(reply.get("session")), token=_token_of(reply))
        return handle

    def _reopen(self, state: _SessionState) -> None:
        # Frames still in flight went to the old session: the server answers them unknown_session, which
        # would ask for yet another reopen. They end here instead, once each.
        handle = next(h for h, s in self._sessions.items() if s is state)
        for request_id in sorted(state.in_flight):
            key = self._frame_requests.pop(request_id, None)
            if key is not None:
                self._events.append(
                    FrameError(session=handle, seq=key[1], code="unknown_session", message="the server forgot the session; it was reopened")
                )
        state.in_flight.clear()
        state.waiting_since = None
        state.dropped_while_waiting = 0
        reply = self._request_connected(state.open_fields)
        state.server_id = int(reply.get("session"))
        state.token = _token_of(reply)  # a new session, a new token
        state.needs_reopen = False

    def close_session(self, session: int) -> None:
        state = self._sessions.pop(session, None)
        if state is None:
            raise KeyError(f"no session {session}")
        for request_id in state.in_flight:
            self._frame_requests.pop(request_id, None)
        # Events of a closed session are no longer anyone's business (e.g. server_gone ones already queued).
        self._events = deque(event for event in self._events if event.session != session)
        if self._socket is not None and not state.needs_reopen:
            try:
                self._request_connected({"op": "close", **state.session_fields()})
            except ServerError as error:
                if error.code != "unknown_session":  # already gone on the server: the goal is reached
                    raise

    def stats(self) -> dict[str, Any]:
        reply = self._request({"op": "stats"})
        return {key: reply.get(key) for key in ("sessions", "engine", "server", "client", "other_clients", "refinement")}

    def in_flight(self, session: int) -> int:
        return len(self._sessions[session].in_flight)

    def can_send(self, session: int) -> bool:
        return self.in_flight(session) < self.max_in_flight

    def send_frame(self, session: int, image: Any, *, timestamp: float | None = None, names: list[str] | None = None) -> int | None:
        """Send a driver frame without blocking. Returns its seq, or None when the window is full.

        ``image``: for image sessions a numpy H×W×3/4 uint8 (or float32 in [0,1]) array, or a Buffer;
        for arkit sessions float32 curves (61 in Live Link Face order, or any with ``names``); for
        landmarks sessions float32 N×2 points in [0, 1]. A numpy array above 64 KiB is sent
        zero-copy: do not modify it until its reply arrives."""
        state = self._sessions[session]
        self._ensure_connected()
        if state.needs_reopen:
            self._reopen(state)
        if len(state.in_flight) >= self.max_in_flight:
            return None
        buffer = image if isinstance(image, (RawBuffer, EncodedBuffer)) else protocol.raw_buffer_from_array(image)
        request_id = self._new_request_id()
        seq = state.next_seq
        header: dict[str, Any] = {
            "op": "frame",
            "id": request_id,
            **state.session_fields(),
            "seq": seq,
            "t": time.time() if timestamp is None else timestamp,
        }
        if names is not None:
            header["names"] = list(names)
        self._send(header, (buffer,), wait_s=0.0)
        state.next_seq += 1
        now = time.monotonic()
        state.in_flight[request_id] = now
        if state.waiting_since is None:
            state.waiting_since = now
        self._frame_requests[request_id] = (session, seq)
        return seq


def _map_of(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _list_of(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []
