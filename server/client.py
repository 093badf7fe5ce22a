"""AvatarClient: the MegaLive client over a ZeroMQ DEALER socket (protocol v1, DESIGN §3).

Depends on pyzmq and protocol.py only (numpy optional): the Blender extension and the Unreal bridge
ship copies of these two files. Not thread-safe: use one client per thread.

    client = AvatarClient(address="tcp://127.0.0.1:5555")
    client.hello()
    session = client.open(avatar=0)
    client.send_frame(session, frame)          # non-blocking; None when the in-flight window is full
    for event in client.poll(timeout_ms=5):    # Texture, FrameDropped or FrameError
        ...

Every wait has a timeout. When the server is gone a ServerGoneError says so; the next call
reconnects and reopens the client's sessions with the same handles once the server is back.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Union

import zmq

from . import protocol
from .protocol import Buffer, EncodedBuffer, Message, RawBuffer

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"


class ServerGoneError(ConnectionError):
    """The server did not answer in time or cannot be reached."""


class ServerError(RuntimeError):
    """The server answered a request with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ServerInfo:
    server: str
    protocol: int
    models: list[dict[str, Any]]
    capabilities: dict[str, Any]
    limits: dict[str, Any]


@dataclass(frozen=True)
class AvatarEntry:
    id: int
    name: str
    model: str
    thumbnail: RawBuffer | None  # h×w×3 uint8; .array() gives numpy when it is installed


@dataclass(frozen=True)
class Texture:
    """A rendered frame. ``buffer`` is RawBuffer (rgba8/rgb8, H×W×C) or EncodedBuffer (jpeg)."""

    session: int
    seq: int
    buffer: Buffer
    timings: dict[str, float]
    sent_at: float
    received_at: float
    face_found: bool | None = None  # crop "auto": False when no face was found and the last crop was reused
    landmarks: list[list[float]] | None = None  # crop "auto" with landmarks=True: 68 [x, y] in [0, 1] over the crop

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
    session: int
    seq: int
    code: str
    message: str


Event = Union[Texture, FrameDropped, FrameError]


@dataclass
class _SessionState:
    open_fields: dict[str, Any]
    server_id: int
    next_seq: int = 0
    in_flight: dict[int, float] = field(default_factory=dict)  # request id -> sent at (monotonic)
    needs_reopen: bool = False


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
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.address = address
        self.name = name
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.limits = limits
        self.context = context or zmq.Context.instance()
        self.server_info: ServerInfo | None = None
        self._socket: zmq.Socket | None = None
        self._next_request_id = 1
        self._sessions: dict[int, _SessionState] = {}
        self._next_handle = 1
        self._frame_requests: dict[int, tuple[int, int]] = {}  # request id -> (session handle, seq)
        self._events: deque[Event] = deque()

    # -------------------------------------------------------------------------------- connection

    @property
    def connected(self) -> bool:
        return self._socket is not None

    def _new_socket(self) -> zmq.Socket:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)  # unsent frames to a dead server are not worth a hang at close
        socket.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a server that is not there: sends fail fast
        socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        socket.setsockopt(zmq.RCVHWM, 64)
        socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        socket.setsockopt(zmq.RECONNECT_IVL, 100)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        socket.connect(self.address)
        return socket

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._frame_requests.clear()
        for state in self._sessions.values():
            state.in_flight.clear()
            state.needs_reopen = True

    def _ensure_connected(self) -> zmq.Socket:
        if self._socket is None:
            self._socket = self._new_socket()
            self.hello()
            for state in self._sessions.values():
                if state.needs_reopen:
                    self._reopen(state)
        return self._socket

    def reconnect(self) -> ServerInfo:
        """Drop the connection and connect again: hello, then reopen every session of this client."""
        self._drop_socket()
        self._ensure_connected()
        assert self.server_info is not None
        return self.server_info

    def close(self) -> None:
        """Close every session (best effort, without waiting long) and the socket."""
        if self._socket is not None:
            for handle in list(self._sessions):
                state = self._sessions.pop(handle)
                self._send({"op": "close", "id": self._new_request_id(), "session": state.server_id}, (), wait_s=0.0, raise_gone=False)
        self._sessions.clear()
        self._drop_socket()

    def __enter__(self) -> "AvatarClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        if wait_s > 0 and not socket.poll(int(wait_s * 1000), zmq.POLLOUT):
            if raise_gone:
                self._drop_socket()
                raise ServerGoneError(f"server at {self.address} is not reachable")
            return False
        try:
            # copy=False: pyzmq copies frames under 64 KiB and sends larger ones zero-copy.
            socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if raise_gone:
                self._drop_socket()
                raise ServerGoneError(f"server at {self.address} is not reachable") from None
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
                    self._drop_socket()
                    raise ServerGoneError(f"no reply from {self.address} within {self.timeout_s:.1f} s ({header['op']})")
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
        if socket is None or not socket.poll(int(wait_s * 1000), zmq.POLLIN):
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
        sent_at = state.in_flight.pop(reply.request_id, time.monotonic())
        if reply.op == "texture" and reply.buffers:
            timings = reply.get("timings") or {}
            face_found, landmarks = reply.get("face_found"), reply.get("landmarks")
            self._events.append(Texture(session=handle, seq=seq, buffer=reply.buffers[0], timings=timings, sent_at=sent_at,
                                        received_at=time.monotonic(), face_found=face_found if isinstance(face_found, bool) else None,
                                        landmarks=landmarks if isinstance(landmarks, list) else None))
        elif reply.op == "dropped":
            self._events.append(FrameDropped(session=handle, seq=seq))
        elif reply.op == "error":
            code = str(reply.get("code"))
            if code == "unknown_session":
                state.needs_reopen = True  # the server restarted under us; reopen before the next frame
            self._events.append(FrameError(session=handle, seq=seq, code=code, message=str(reply.get("message"))))

    def poll(self, timeout_ms: int = 0) -> list[Event]:
        """Every event that has arrived, waiting at most timeout_ms for the first one.

        Raises ServerGoneError when a frame has been in flight longer than timeout_s."""
        if self._socket is not None:
            wait_s = timeout_ms / 1000.0 if not self._events else 0.0
            while (reply := self._receive(wait_s)) is not None:
                self._dispatch(reply)
                wait_s = 0.0
        events = list(self._events)
        self._events.clear()
        if not events:
            self._check_in_flight()
        return events

    def _check_in_flight(self) -> None:
        now = time.monotonic()
        for state in self._sessions.values():
            if state.in_flight and now - min(state.in_flight.values()) > self.timeout_s:
                self._drop_socket()
                raise ServerGoneError(f"no texture from {self.address} for {self.timeout_s:.1f} s: the server is gone or stuck")

    # -------------------------------------------------------------------------------- operations

    def hello(self) -> ServerInfo:
        if self._socket is None:
            self._socket = self._new_socket()
        reply = self._request_connected({"op": "hello", "client": self.name, "versions": [protocol.PROTOCOL_VERSION]})
        self.server_info = ServerInfo(
            server=str(reply.get("server")),
            protocol=int(reply.get("protocol", 0)),
            models=list(reply.get("models") or []),
            capabilities=dict(reply.get("capabilities") or {}),
            limits=dict(reply.get("limits") or {}),
        )
        return self.server_info

    def avatars(self) -> list[AvatarEntry]:
        reply = self._request({"op": "avatars"})
        entries = []
        for entry in reply.get("avatars") or []:
            thumbnail = entry.get("thumbnail")
            buffer = reply.buffers[thumbnail["buffer"]] if isinstance(thumbnail, dict) else None
            entries.append(AvatarEntry(id=int(entry["id"]), name=str(entry["name"]), model=str(entry.get("model", "")),
                                       thumbnail=buffer if isinstance(buffer, RawBuffer) else None))
        return entries

    def open(self, *, avatar: int, driver: str = "image", size: tuple[int, int] | None = None,
             output_format: str = "rgba8", crop: str = "none", landmarks: bool = False,
             stabilise: bool | dict[str, Any] | None = None) -> int:
        """Open a session; returns a client-side handle that stays valid across reconnects.

        ``driver``: image | arkit | landmarks. ``crop="auto"``: the server finds and aligns the face in
        full image frames (``landmarks=True`` returns the 68 points it found with each texture).
        ``stabilise``: the server's One-Euro filters: None = server defaults, False = off, or a map
        ``{"pose"|"expression"|"box": {"min_cutoff_hz": .., "beta": ..} | False}``."""
        fields: dict[str, Any] = {"op": "open", "avatar": avatar, "driver": driver, "format": output_format, "crop": crop}
        if size is not None:
            fields["size"] = [int(size[0]), int(size[1])]
        if landmarks:
            fields["landmarks"] = True
        if stabilise is not None:
            fields["filter"] = stabilise
        reply = self._request(fields)
        handle = self._next_handle
        self._next_handle += 1
        self._sessions[handle] = _SessionState(open_fields=fields, server_id=int(reply.get("session")))
        return handle

    def _reopen(self, state: _SessionState) -> None:
        reply = self._request_connected(state.open_fields)
        state.server_id = int(reply.get("session"))
        state.needs_reopen = False
        state.in_flight.clear()

    def close_session(self, session: int) -> None:
        state = self._sessions.pop(session, None)
        if state is None:
            raise KeyError(f"no session {session}")
        for request_id in state.in_flight:
            self._frame_requests.pop(request_id, None)
        if self._socket is not None and not state.needs_reopen:
            try:
                self._request_connected({"op": "close", "session": state.server_id})
            except ServerError as error:
                if error.code != "unknown_session":  # already gone on the server: the goal is reached
                    raise

    def stats(self) -> dict[str, Any]:
        reply = self._request({"op": "stats"})
        return {key: reply.get(key) for key in ("sessions", "engine", "server")}

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
        header: dict[str, Any] = {"op": "frame", "id": request_id, "session": state.server_id, "seq": seq,
                                  "t": time.time() if timestamp is None else timestamp}
        if names is not None:
            header["names"] = list(names)
        self._send(header, (buffer,), wait_s=0.0)
        state.next_seq += 1
        state.in_flight[request_id] = time.monotonic()
        self._frame_requests[request_id] = (session, seq)
        return seq
