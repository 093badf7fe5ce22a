"""Flow control between the server and each client: messages as read off the socket, a connection's
message budget (a token bucket), and the small backlog of replies to a client whose queue is full."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import zmq

from client.protocol import ProtocolError, encode, unpack_header


@dataclass
class Incoming:
    """One message off the ROUTER: the sender, the frames kept, and whether it broke the part/byte limits."""

    peer: bytes
    frames: list[zmq.Frame]
    oversized: bool = False
    shed: bool = False  # over its connection's message rate: let go unparsed


SMALL_REPLY_BYTES = 64 * 1024  # replies above this (textures) are never held back: they become `dropped`


@dataclass
class ReplyBacklog:
    """Small replies to one client, waiting for room in ZeroMQ's queue for it."""

    replies: collections.deque[list] = field(default_factory=collections.deque)
    nbytes: int = 0


def send_or_hold(
    socket: zmq.Socket, peer: bytes, frames: list, backlogs: dict[bytes, ReplyBacklog], *, limit_bytes: int
) -> tuple[int, zmq.ZMQError | None]:
    """Send a reply to ``peer`` on a ROUTER at once, or hold it in the peer's small backlog when ZeroMQ's queue for it
    is full (the server's and the proxy's replies alike). A texture that does not fit becomes a `dropped` reply (so a
    frame still ends in exactly one event); the backlog holds small replies only, up to ``limit_bytes``. Returns how
    many replies overflowed (0-2) and the error of a peer that cannot be routed to (for the caller to handle)."""
    backlog = backlogs.get(peer)
    if backlog is None:
        try:
            socket.send_multipart([peer, *frames], zmq.NOBLOCK, copy=False)
            return 0, None
        except zmq.ZMQError as error:
            if error.errno != zmq.EAGAIN:
                return 0, error
        backlog = backlogs[peer] = ReplyBacklog()
    overflowed = 0
    if sum(len(frame) for frame in frames) > SMALL_REPLY_BYTES:
        overflowed += 1
        dropped = as_dropped(frames)
        if dropped is None:
            return overflowed, None
        frames = dropped
    size = sum(len(frame) for frame in frames)
    if backlog.nbytes + size > limit_bytes:
        return overflowed + 1, None
    backlog.replies.append(frames)
    backlog.nbytes += size
    return overflowed, None


def flush_backlogs(socket: zmq.Socket, backlogs: dict[bytes, ReplyBacklog]) -> list[tuple[bytes, zmq.ZMQError]]:
    """Send what the backlogs hold while ZeroMQ has room; returns the peers that cannot be routed to, with the error."""
    unroutable = []
    for peer in list(backlogs):
        backlog = backlogs[peer]
        while backlog.replies:
            try:
                socket.send_multipart([peer, *backlog.replies[0]], zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as error:
                if error.errno != zmq.EAGAIN:
                    unroutable.append((peer, error))
                break
            backlog.nbytes -= sum(len(frame) for frame in backlog.replies.popleft())
        if not backlog.replies:
            del backlogs[peer]
    return unroutable


def as_dropped(frames: list) -> list | None:
    """A texture reply's `dropped` stand-in (same id, session, seq); None for any other large reply."""
    try:
        header = unpack_header(frames[0].buffer if isinstance(frames[0], zmq.Frame) else frames[0])
    except ProtocolError:
        return None
    if header.get("op") != "texture":
        return None
    return encode({"op": "dropped", "id": header.get("id"), "session": header.get("session"), "seq": header.get("seq")})


@dataclass
class MessageBudget:
    """A connection's token bucket of messages."""

    tokens: float
    refilled_at: float


class ConnectionTable:
    """Which client connection (its server-side socket descriptor) each ROUTER identity came in on, so that a
    DISCONNECTED monitor event, which names only the descriptor, closes the right client's sessions.

    The OS reuses a closed connection's descriptor at once, and the monitor's events travel apart from the messages:
    a new client's first message can arrive on descriptor 12 before the event that says the previous client on 12
    left. That previous client is gone (two open connections never share a descriptor), so it is reported gone at
    once, and the late event it still owes is skipped instead of closing the new client's sessions.
    """

    def __init__(self) -> None:
        self._fds: dict[bytes, int] = {}  # identity -> descriptor
        self._owed: collections.Counter[int] = collections.Counter()  # descriptor -> DISCONNECTED events still to skip

    def __contains__(self, peer: bytes) -> bool:
        return peer in self._fds

    def register(self, peer: bytes, fd: int) -> list[bytes]:
        """A new identity's first message came in on ``fd``; returns the identities that must have left (listed on it)."""
        gone = [other for other, other_fd in self._fds.items() if other_fd == fd and other != peer]
        for other in gone:
            del self._fds[other]
            self._owed[fd] += 1
        self._fds[peer] = fd
        return gone

    def disconnected(self, fd: int) -> list[bytes]:
        """The monitor says the connection on ``fd`` closed; returns the identities that left."""
        if self._owed[fd] > 0:
            self._owed[fd] -= 1  # the event of a client already reported gone at register
            return []
        gone = [peer for peer, peer_fd in self._fds.items() if peer_fd == fd]
        for peer in gone:
            del self._fds[peer]
        return gone
