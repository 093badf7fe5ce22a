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
