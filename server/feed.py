"""The publishing end of the texture feed (client/feed.py has the format and the subscriber).

An XPUB socket, bound like the server's ROUTER: loopback (or a private ipc folder) without keys, any other
address only with CURVE keys (server/binding.py), checked by pyzmq's ZAP authenticator against an allow
folder of subscriber public keys (server/keys.py), so one keypair and one `megalive keys new` serve both.

Sending never waits: each subscriber has its own queue of ``send_queue`` messages; a subscriber whose queue
is full loses that texture (ZeroMQ drops its copy), the others and the caller are untouched. XPUB rather
than PUB only to count subscribers: ZeroMQ passes their subscribe and unsubscribe messages up
(XPUB_VERBOSER), read without blocking in ``poll_subscribers``.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from client.feed import DEFAULT_SEND_QUEUE, encode_feed_message
from client.protocol import RawBuffer
from server.binding import BindRefused, check_bind_address
from server.keys import CurveServerKeys, KeyFileError, load_server_keys, serve_with_curve

MAX_SUBSCRIPTION_BYTES = 4096  # a subscriber sends subscriptions (one byte + a topic, empty here) and its handshake


class FeedStartError(ValueError):
    """The publisher cannot start (bad keys, refused or busy address); the text is one line."""


@dataclass(frozen=True)
class PublisherConfig:
    bind: str
    curve: CurveServerKeys | None = None
    send_queue: int = DEFAULT_SEND_QUEUE  # messages queued per subscriber before its copies are dropped
    linger_ms: int = 0  # textures to a node that left are not worth a wait at shutdown


@dataclass
class PublisherCounters:
    published: int = 0  # textures handed to ZeroMQ (each subscriber gets it unless its queue is full)
    refused: int = 0  # sends ZeroMQ would not take at all (should stay 0: XPUB drops per subscriber)


class TexturePublisher:
    """Publish textures to every subscriber without ever waiting for one. Use from one thread."""

    def __init__(self, *, config: PublisherConfig, context: zmq.Context | None = None) -> None:
        try:
            check_bind_address(config.bind, curve=config.curve is not None)
        except BindRefused as error:
            # The same rule as `serve`, said with the relay's option names.
            message = str(error).replace("--curve-secret FILE --allow DIR", "--publish-curve-secret FILE --publish-allow DIR")
            raise FeedStartError(message) from None
        if config.send_queue < 1:
            raise FeedStartError("send_queue must be at least 1")
        self.config = config
        self.counters = PublisherCounters()
        self.subscribers = 0
        # The ZAP authenticator is one per context: a CURVE publisher gets a context of its own.
        self._own_context = context is None and config.curve is not None
        self._context = context or (zmq.Context() if self._own_context else zmq.Context.instance())
        self._auth: Any = None
        self._socket = self._context.socket(zmq.XPUB)
        try:
            self._configure(config)
            self._socket.bind(config.bind)
        except zmq.ZMQError as error:
            self.close()
            if error.errno == errno.EADDRINUSE:
                raise FeedStartError(f"cannot publish on {config.bind}: the port is already in use") from None
            raise FeedStartError(f"cannot publish on {config.bind}: {error}") from None
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _configure(self, config: PublisherConfig) -> None:
        socket = self._socket
        socket.setsockopt(zmq.LINGER, config.linger_ms)
        socket.setsockopt(zmq.SNDHWM, config.send_queue)
        socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscribe and unsubscribe comes up: a subscriber count
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
        socket.setsockopt(zmq.RCVHWM, 64)
        # A node that vanished without a FIN (power cut, cable) is let go after 30 s, and the textures queued for
        # it with it. So is one that stopped reading that long (it reads no PING either); it reconnects by itself.
        socket.setsockopt(zmq.HEARTBEAT_IVL, 5000)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 30000)
        if "[" in config.bind:
            socket.setsockopt(zmq.IPV6, 1)
        if config.curve is not None:
            self._auth = serve_with_curve(socket, self._context, config.curve, log_name="megalive.feed.auth")

    def poll_subscribers(self) -> int:
        """Read the subscription messages that arrived (never waits); returns the subscriber count."""
        while True:
            try:
                message = self._socket.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return self.subscribers
            if message[:1] == b"\x01":
                self.subscribers += 1
            elif message[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)

    def publish(self, texture: RawBuffer, *, seq: int, source_seq: int, avatar: int) -> bool:
        """Send one texture to every subscriber with room for it (False only if ZeroMQ refused it for all).

        ``seq``: the caller's texture number, +1 per texture, so a subscriber's gaps are the textures it missed."""
        # libzmq learns lazily how much each subscriber has taken (commands that a send may skip for a while); a
        # receive that finds nothing processes them. Without it a node that keeps up could lose a texture to a stale count.
        self.poll_subscribers()
        parts = encode_feed_message(seq=seq, texture=texture, source_seq=source_seq, avatar=avatar, published_at=time.time())
        try:
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.counters.refused += 1
            return False
        self.counters.published += 1
        return True

    def close(self) -> None:
        self._socket.close(linger=self.config.linger_ms)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self._context.term()
            self._own_context = False

    def __enter__(self) -> TexturePublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_texture_publisher(*, bind: str, curve_secret: Path | None = None, allow: Path | None = None) -> TexturePublisher:
    """A publisher from command-line style options; FeedStartError (one line) when it cannot start."""
    if (curve_secret is None) != (allow is None):
        raise FeedStartError("--publish-curve-secret and --publish-allow go together")
    curve = None
    if curve_secret is not None and allow is not None:
        try:
            curve = load_server_keys(secret_file=curve_secret, allow_dir=allow)
        except KeyFileError as error:
            raise FeedStartError(f"bad CURVE key for publishing: {error}") from None
    return TexturePublisher(config=PublisherConfig(bind=bind, curve=curve))
