"""The texture feed: rendered textures fanned out over ZeroMQ PUB/SUB to render nodes and viewers (DESIGN §3, Scale-out).

A publisher (``megalive livelink relay --publish ADDR``) binds an XPUB socket; any number of subscribers
(``megalive view``, a Blender or Unreal node through ``TextureSubscriber``) connect to it. Every message is
a two-frame multipart list, no msgpack, no pickle:

    frame 0  header  UTF-8 JSON object, at most MAX_HEADER_BYTES:
                     {"feed": 1,              wire version (major); another major is refused and counted
                      "seq": 41,              the publisher's texture number, from 0, +1 per texture it published
                      "frame": 57,            the server's seq of the driver frame this texture renders
                      "avatar": 1,            the avatar id the publisher's session renders
                      "t": 1730000000.123,    publish time (Unix seconds, the publisher's clock)
                      "dtype": "|u1",         bytes (the only dtype)
                      "shape": [H, W, C]}     C = 4 (RGBA) or 3 (RGB); unknown keys are ignored
    frame 1  pixels  H*W*C bytes, rows top to bottom, no padding (the server's rgba8 texture as it arrived)

A receiver checks the header's size before parsing it, the dtype, the shape's range and
``H*W*C == len(pixels)`` before it looks at the bytes; anything else is counted as malformed and skipped.

Falling behind: a node that reads slowly or never loses frames, never slows the publisher or the other nodes.
The publisher sends without blocking into a small per-subscriber queue (SNDHWM 4); when a node's queue is full,
ZeroMQ drops that node's copy only. ZMQ_CONFLATE cannot be used on the subscriber (libzmq does not conflate
multipart messages), so ``TextureSubscriber.receive_latest`` does the same by hand: it drains what has
arrived and keeps the newest. The ``seq`` numbers say what a node missed.

Host-free: pyzmq and the standard library (numpy only inside ``FeedFrame.array``), so Blender and Unreal
nodes can run it as they run client.py. A host ticks ``receive_latest(timeout_ms=0)`` from its own timer:

    subscriber = TextureSubscriber(address="tcp://stage-relay:5570", curve=load_curve_client_keys(...))
    frame = subscriber.receive_latest(timeout_ms=0)   # None: nothing new since the last tick
    if frame is not None:
        upload(frame.pixels, frame.width, frame.height, frame.channels)
    subscriber.close()
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from .client import CurveClientKeys
from .protocol import RawBuffer

FEED_VERSION = 1
DEFAULT_FEED_ADDRESS = "tcp://127.0.0.1:5570"
MAX_HEADER_BYTES = 1024
MAX_SIDE = 8192  # pixels, either side of a texture
CHANNELS = (3, 4)
DEFAULT_MAX_PIXEL_BYTES = 32 * 1024 * 1024  # one 4096×2048 RGBA8 texture: the server's largest reply buffer
# Messages a subscriber's ZeroMQ queue holds: a node that reads slowly sees the newest, not a backlog.
DEFAULT_QUEUE = 2
# Messages the publisher queues per subscriber before it drops that subscriber's copies. A few, so a live
# burst (two textures in one poll) passes while ZeroMQ's I/O thread moves them into the socket; beyond it
# the kernel's socket buffer holds a slow node's backlog, and then its copies are dropped.
DEFAULT_SEND_QUEUE = 4

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class FeedMessageError(ValueError):
    """A feed message that breaks the format above; the text says how, in one line."""


@dataclass(frozen=True)
class FeedFrame:
    """One texture of the feed. ``pixels`` is H*W*C bytes, rows top to bottom."""

    seq: int
    source_seq: int
    avatar: int
    published_at: float
    width: int
    height: int
    channels: int
    pixels: memoryview

    def array(self) -> Any:
        """A read-only numpy H×W×C uint8 view on the pixels (no copy)."""
        import numpy as np

        return np.frombuffer(self.pixels, dtype=np.uint8).reshape(self.height, self.width, self.channels)


def encode_feed_message(*, seq: int, texture: RawBuffer, source_seq: int, avatar: int, published_at: float) -> list[Any]:
    """The two frames of one feed message; the pixel frame is ``texture``'s bytes, not a copy."""
    if texture.dtype != "|u1" or len(texture.shape) != 3 or texture.shape[2] not in CHANNELS:
        raise FeedMessageError(f"the feed carries H×W×3 or H×W×4 bytes, not {texture.dtype} {list(texture.shape)}")
    header = {
        "feed": FEED_VERSION,
        "seq": int(seq),
        "frame": int(source_seq),
        "avatar": int(avatar),
        "t": float(published_at),
        "dtype": "|u1",
        "shape": [int(n) for n in texture.shape],
    }
    return [json.dumps(header, separators=(",", ":")).encode("utf-8"), texture.data]


def _integer(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FeedMessageError(f"header field {key!r} must be an integer >= 0, got {value!r}")
    return value


def decode_feed_message(parts: list[Any], *, max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES) -> FeedFrame:
    """A FeedFrame from a message's frames (bytes or zmq.Frame); FeedMessageError if it breaks the format."""
    if len(parts) != 2:
        raise FeedMessageError(f"a feed message has 2 frames (header, pixels), this one {len(parts)}")
    header_bytes, pixels = (memoryview(part).cast("B") for part in parts)
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise FeedMessageError(f"header of {len(header_bytes)} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(bytes(header_bytes).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise FeedMessageError("the header is not a UTF-8 JSON object") from None
    if not isinstance(header, dict):
        raise FeedMessageError("the header is not a UTF-8 JSON object")
    if header.get("feed") != FEED_VERSION:
        raise FeedMessageError(f"feed version {header.get('feed')!r}; this subscriber reads version {FEED_VERSION}")
    if header.get("dtype") != "|u1":
        raise FeedMessageError(f"dtype {header.get('dtype')!r}; the feed carries '|u1' only")
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
        or not (1 <= shape[0] <= MAX_SIDE and 1 <= shape[1] <= MAX_SIDE and shape[2] in CHANNELS)
    ):
        raise FeedMessageError(f"shape {shape!r}; expected [H, W, 3 or 4] with sides in [1, {MAX_SIDE}]")
    height, width, channels = shape
    if height * width * channels != len(pixels) or len(pixels) > max_pixel_bytes:
        raise FeedMessageError(f"{len(pixels)} pixel bytes for shape {shape} (at most {max_pixel_bytes})")
    published_at = header.get("t")
    if not isinstance(published_at, (int, float)) or isinstance(published_at, bool) or not math.isfinite(published_at):
        raise FeedMessageError(f"header field 't' must be a finite number, got {published_at!r}")
    return FeedFrame(
        seq=_integer(header, "seq"),
        source_seq=_integer(header, "frame"),
        avatar=_integer(header, "avatar"),
        published_at=float(published_at),
        width=width,
        height=height,
        channels=channels,
        pixels=pixels,
    )


@dataclass
class SubscriberCounters:
    received: int = 0  # well-formed textures that arrived here
    returned: int = 0  # textures receive_latest handed out
    skipped: int = 0  # arrived, but a newer one arrived in the same drain (latest wins)
    missed: int = 0  # gaps in seq: published while this node's queue was full, dropped for it alone
    malformed: int = 0  # messages that broke the format (skipped)
    restarts: int = 0  # seq went backwards: the publisher was restarted


class TextureSubscriber:
    """A SUB socket on a texture feed that hands out the newest texture, never a backlog.

    Never blocks longer than the ``timeout_ms`` it is given. ``problem`` holds one line when the
    handshake with the publisher failed (CURVE keys missing, wrong or not allowed); ZeroMQ retries by
    itself, so a fixed key or a restarted publisher needs no new subscriber."""

    def __init__(
        self,
        *,
        address: str = DEFAULT_FEED_ADDRESS,
        curve: CurveClientKeys | None = None,
        queue: int = DEFAULT_QUEUE,
        max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES,
        context: zmq.Context | None = None,
    ) -> None:
        if queue < 1:
            raise ValueError("queue must be at least 1")
        self.address = address
        self.curve = curve
        self.max_pixel_bytes = max_pixel_bytes
        self.counters = SubscriberCounters()
        self.problem: str | None = None
        self.connected_once = False  # a handshake succeeded at least once
        self._failed_handshakes = 0  # in a row, without detail
        self._last_seq: int | None = None
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._monitor: zmq.Socket | None = None
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.RCVHWM, queue)
            # libzmq checks each frame's announced length against this before buffering it.
            self._socket.setsockopt(zmq.MAXMSGSIZE, max(max_pixel_bytes, MAX_HEADER_BYTES))
            self._socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            self._socket.setsockopt(zmq.RECONNECT_IVL, 100)
            self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            if "[" in address:
                self._socket.setsockopt(zmq.IPV6, 1)
            if curve is not None:
                self._socket.setsockopt(zmq.CURVE_SERVERKEY, curve.server_public)
                self._socket.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
                self._socket.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
            self._socket.setsockopt(zmq.SUBSCRIBE, b"")
            # Before connect, so the first handshake's outcome is seen (a refused one is otherwise silence).
            self._monitor = self._socket.get_monitor_socket(events=_HANDSHAKE_EVENTS, addr=f"inproc://megalive-feed-{uuid.uuid4().hex}")
            self._socket.connect(address)
        except zmq.ZMQError:
            self.close()
            raise

    def __enter__(self) -> TextureSubscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass  # the socket is already closed
            monitor.close(linger=0)
        self._socket.close(linger=0)

    @property
    def closed(self) -> bool:
        return bool(self._socket.closed)

    def _read_handshake_events(self) -> None:
        monitor = self._monitor
        while monitor is not None and monitor.poll(0, zmq.POLLIN):
            event = parse_monitor_message(monitor.recv_multipart())
            kind, value = event["event"], int(event["value"])
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.problem = None
                self.connected_once = True
                self._failed_handshakes = 0
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # A CURVE publisher that cannot read our hello (a wrong key for it), or one that a plain node reaches,
                # may just close the connection. Twice in a row: a publisher stopped mid-handshake looks the same once.
                self._failed_handshakes += 1
                if self._failed_handshakes >= 2:
                    self.problem = (
                        f"the publisher at {self.address} refused this node's CURVE handshake: check the publisher's public key"
                        if self.curve is not None
                        else f"the publisher at {self.address} ends every handshake: it may require CURVE "
                        "(give its public key and this node's secret key)"
                    )
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.problem = f"the publisher at {self.address} refused this node's CURVE key (status {value}: not on its allow-list)"
            elif value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                self.problem = (
                    f"the publisher at {self.address} requires CURVE: give its public key and this node's secret key"
                    if self.curve is None
                    else f"the publisher at {self.address} does not use CURVE: connect without keys"
                )
            else:
                self.problem = f"the handshake with the publisher at {self.address} failed (ZMTP protocol error {value:#x})"

    def _account(self, frame: FeedFrame) -> None:
        last = self._last_seq
        if last is not None:
            if frame.seq > last + 1:
                self.counters.missed += frame.seq - last - 1
            elif frame.seq < last:
                self.counters.restarts += 1
        self._last_seq = frame.seq
        self.counters.received += 1

    def receive_latest(self, timeout_ms: int = 0) -> FeedFrame | None:
        """Wait at most ``timeout_ms`` for a texture, then take everything that has arrived and return the
        newest (the others are counted as skipped); None when nothing new arrived."""
        self._read_handshake_events()
        newest: FeedFrame | None = None
        if not self._socket.poll(max(0, int(timeout_ms)), zmq.POLLIN):
            self._read_handshake_events()
            return None
        while True:
            try:
                parts = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                frame = decode_feed_message(parts, max_pixel_bytes=self.max_pixel_bytes)
            except FeedMessageError:
                self.counters.malformed += 1
                continue
            self._account(frame)
            if newest is not None:
                self.counters.skipped += 1
            newest = frame
        if newest is not None:
            self.counters.returned += 1
            self.connected_once = True
        return newest

    def wait_for_frame(self, timeout_s: float) -> FeedFrame | None:
        """The first texture to arrive within ``timeout_s`` (None when none did)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            frame = self.receive_latest(timeout_ms=max(0, min(remaining_ms, 100)))
            if frame is not None or remaining_ms <= 0:
                return frame
