"""`megalive livelink relay`: Live Link Face (UDP) -> a MegaLive server `arkit` session.

One loop, bounded work per iteration: drain at most ``max_packets_per_poll`` datagrams, send the
newest frame of the chosen subject when it is new and the in-flight window has room, read the
server's replies (waiting at most ``poll_ms``), print a progress line at most once a second.

The ARKit session payload is one float32 buffer of shape [61], little-endian on the wire ('<f4'):
the 52 blendshapes in Live Link Face order (``ARKIT_BLENDSHAPES``) then the 9 rotations
(``ROTATION_NAMES``: head, left eye, right eye; yaw/pitch/roll each) -- exactly the packet's order.

A model exported with an ``arkit`` driver (the shipped one has it) renders every forwarded frame;
the server stabilises the curves with its One-Euro filters. Head and eye rotations are passed on
as the packet carries them and read as radians by the server. A model without an ARKit input
makes the server refuse ``open`` with driver ``arkit``; the relay then prints one line saying so
and exits with ``EXIT_REFUSED``. It never fakes output.

Local problems are found before the server is contacted and end the relay with one line and
``EXIT_USAGE``: a bad CURVE key file, the UDP port already held by another receiver, a take that
cannot be opened, a publish address that is refused or taken, a PNG folder that already holds a
sequence. A take is capped at ``record_max_bytes``; reaching the cap finishes the take and the relay
goes on forwarding.

Where the textures go (none of it ever makes the loop wait):

- ``publish``: a texture feed (client/feed.py has the wire format) that any number of render nodes and
  ``megalive view`` windows subscribe to. Loopback without keys; another address only with CURVE
  (``publish_curve_secret`` + ``publish_allow``, the server's rules). A node that reads slowly or never
  loses textures; the relay and the other nodes go on at full rate. The publisher comes from the
  ``open_feed`` the caller passes (the `megalive` command passes server/feed.py's).
- ``record_png``: ``frame_NNNNNN.png`` per texture in a folder, each written under a temporary name and
  renamed into place, on a thread of its own; frames it cannot keep up with are counted, not queued.

Texture NNNNNN (from 0, +1 per rendered texture) is the feed's ``seq`` and the PNG's number alike.
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from .client_shim import client as client_module
from .client_shim import protocol
from .livelink.packet import VALUE_COUNT, FaceFrame
from .livelink.receiver import DEFAULT_BIND_ADDRESS, DEFAULT_PORT, LiveLinkFaceReceiver, PortInUseError
from .livelink.take import DEFAULT_TAKE_MAX_BYTES, TakeWriter

if TYPE_CHECKING:  # imported where used: inside Unreal only the vendored client exists (live_texture imports this module)
    from client.png_sequence import PngSequenceWriter

EXIT_OK = 0
EXIT_REFUSED = 2  # the server refused the session (no ARKit input, unknown avatar, ...)
EXIT_USAGE = 2  # a local problem before relaying: bad key file, UDP port in use, take not writable
EXIT_SERVER_GONE = 3  # the server could not be reached at start

_CURVES_LE = struct.Struct(f"<{VALUE_COUNT}f")  # the wire dtype '<f4' is little-endian, unlike the packet


@dataclass(frozen=True)
class RelayConfig:
    server: str = client_module.DEFAULT_ADDRESS
    avatar: int = 0
    subject: str | None = None  # None: the newest frame of any subject
    listen: str = DEFAULT_BIND_ADDRESS  # loopback; a phone on the LAN needs "0.0.0.0" (or the LAN address)
    port: int = DEFAULT_PORT
    output_size: tuple[int, int] | None = None  # (height, width); None: the model's resolution
    timeout_s: float = 2.0
    max_in_flight: int = 2
    record: Path | None = None
    record_max_bytes: int = DEFAULT_TAKE_MAX_BYTES  # the take is finished at this size; relaying goes on
    server_key: Path | None = None  # CURVE (remote server): the server's public key file
    client_key: Path | None = None  # CURVE: this client's secret key file
    poll_ms: int = 5  # longest wait for server replies per iteration; UDP waits at most this long
    max_packets_per_poll: int = 256
    progress_interval_s: float = 1.0
    duration_s: float | None = None  # stop after this long (None: until Ctrl-C / SIGTERM)
    publish: str | None = None  # texture feed address to bind (None: no feed), e.g. tcp://127.0.0.1:5570
    publish_curve_secret: Path | None = None  # CURVE for the feed: the relay's .key_secret file (with publish_allow)
    publish_allow: Path | None = None  # CURVE for the feed: folder of allowed subscribers' public .key files
    record_png: Path | None = None  # folder for a PNG sequence of the textures (None: none)


class TextureFeed(Protocol):
    """The publishing end of a texture feed (server/feed.py's TexturePublisher)."""

    address: str  # the bound address (a port given as * resolved)

    def publish(self, texture: protocol.RawBuffer, *, seq: int, source_seq: int, avatar: int) -> bool: ...

    def poll_subscribers(self) -> int: ...

    def close(self) -> None: ...


class OpenFeed(Protocol):
    """Binds a feed; raises ValueError with one line when it cannot (bad keys, refused or busy address)."""

    def __call__(self, *, bind: str, curve_secret: Path | None, allow: Path | None) -> TextureFeed: ...


@dataclass
class RelayCounters:
    forwarded: int = 0
    rendered: int = 0
    dropped: int = 0
    errors: int = 0
    skipped_busy: int = 0  # new frames not sent because the in-flight window was full
    unrecorded: int = 0  # datagrams received after the take reached its size cap
    published: int = 0  # textures sent to the feed's subscribers


class RelayStartError(Exception):
    """A local problem found before relaying; its text is the one line the relay prints."""


def curves_payload(frame: FaceFrame) -> protocol.RawBuffer:
    """A Live Link Face frame as the ARKit session payload: float32 [61], '<f4', packet order."""
    return protocol.raw_buffer_from_bytes(_CURVES_LE.pack(*frame.values), dtype="<f4", shape=(VALUE_COUNT,))


def _is_missing_arkit_input(error: client_module.ServerError) -> bool:
    return error.code == "bad_request" and "'arkit' input" in error.message


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_curve_keys(config: RelayConfig) -> client_module.CurveClientKeys | None:
    """The CURVE keys named by the config, None for a plain (loopback) connection."""
    if config.server_key is None and config.client_key is None:
        return None
    if config.server_key is None or config.client_key is None:
        raise RelayStartError("--server-key and --client-key go together: the server's public key file and this client's secret key file")
    try:
        return client_module.load_curve_client_keys(server_public_key=config.server_key, client_secret_key=config.client_key)
    except (client_module.CurveKeyError, OSError) as error:
        raise RelayStartError(f"bad CURVE key file: {_one_line(error)}") from None


def bind_receiver(config: RelayConfig) -> LiveLinkFaceReceiver:
    """The UDP receiver on ``config.listen``:``config.port``; a port held elsewhere is a RelayStartError."""
    try:
        return LiveLinkFaceReceiver(bind_address=config.listen, port=config.port, max_packets_per_poll=config.max_packets_per_poll)
    except PortInUseError as error:
        raise RelayStartError(f"{error}; stop that receiver or pass --port N") from None
    except OSError as error:
        raise RelayStartError(f"cannot listen on UDP {config.listen}:{config.port}: {_one_line(error.strerror or error)}") from None


def open_take(config: RelayConfig) -> TakeWriter | None:
    """The take writer for ``config.record`` (None: no recording); a take that cannot be opened is a RelayStartError."""
    if config.record is None:
        return None
    try:
        return TakeWriter(config.record, max_bytes=config.record_max_bytes)
    except OSError as error:
        raise RelayStartError(f"cannot record to {config.record}: {_one_line(error)}") from None


class TextureOutputs:
    """Where rendered textures go: the feed and/or the PNG sequence. Every call returns without waiting."""

    def __init__(self, *, feed: TextureFeed | None, png: PngSequenceWriter | None, avatar: int) -> None:
        self.feed = feed
        self.png = png
        self.avatar = avatar
        self.next_seq = 0
        self.subscribers = 0
        self._png_failure_said = False

    def deliver(self, texture: client_module.Texture, counters: RelayCounters) -> None:
        buffer = texture.buffer
        seq = self.next_seq
        self.next_seq += 1
        if not isinstance(buffer, protocol.RawBuffer) or buffer.dtype != "|u1" or len(buffer.shape) != 3:
            return  # the relay opens rgba8 sessions: always raw H×W×4 bytes
        if self.feed is not None and self.feed.publish(buffer, seq=seq, source_seq=texture.seq, avatar=self.avatar):
            counters.published += 1
        if self.png is not None:
            height, width, channels = buffer.shape
            self.png.submit(seq=seq, pixels=buffer.data, width=width, height=height, channels=channels)

    def poll(self) -> None:
        if self.feed is not None:
            self.subscribers = self.feed.poll_subscribers()

    def progress(self, counters: RelayCounters) -> str:
        """The progress line's part about the outputs."""
        text = ""
        if self.feed is not None:
            text += f"  published {counters.published} to {self.subscribers} subscribers"
        if self.png is not None:
            text += f"  png {self.png.written}"
            if self.png.not_written:
                text += f" ({self.png.not_written} not written)"
        return text

    def png_failure(self) -> str | None:
        """The PNG writer's failure, once (None afterwards and while it writes)."""
        if self.png is None or self.png.failure is None or self._png_failure_said:
            return None
        self._png_failure_said = True
        return self.png.failure

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
        if self.png is not None:
            self.png.close()


def open_outputs(config: RelayConfig, open_feed: OpenFeed | None) -> TextureOutputs | None:
    """The feed and PNG sequence named by the config (None: neither); RelayStartError if one cannot start."""
    if config.publish is None and (config.publish_curve_secret is not None or config.publish_allow is not None):
        raise RelayStartError("--publish-curve-secret and --publish-allow secure a feed: give --publish ADDR too")
    png = None
    if config.record_png is not None:
        from client.png_sequence import PngSequenceWriter, SequenceFolderError

        try:
            png = PngSequenceWriter(directory=config.record_png)
        except SequenceFolderError as error:
            raise RelayStartError(str(error)) from None
    feed = None
    if config.publish is not None:
        try:
            if open_feed is None:
                raise RelayStartError("publishing needs a feed implementation (the megalive command passes one)")
            try:
                feed = open_feed(bind=config.publish, curve_secret=config.publish_curve_secret, allow=config.publish_allow)
            except ValueError as error:
                raise RelayStartError(_one_line(error)) from None
        except RelayStartError:
            if png is not None:
                png.close()
            raise
    if feed is None and png is None:
        return None
    return TextureOutputs(feed=feed, png=png, avatar=config.avatar)


def _start_locally(
    config: RelayConfig, open_feed: OpenFeed | None
) -> tuple[client_module.CurveClientKeys | None, LiveLinkFaceReceiver, TakeWriter | None, TextureOutputs | None]:
    """Everything local, before any network wait: keys, the UDP port, the take, the outputs. Raises RelayStartError."""
    curve = load_curve_keys(config)
    receiver = bind_receiver(config)
    writer = None
    try:
        writer = open_take(config)
        outputs = open_outputs(config, open_feed)
    except RelayStartError:
        receiver.close()
        if writer is not None:
            writer.discard()
        raise
    return curve, receiver, writer, outputs


def run_relay(
    config: RelayConfig,
    *,
    open_feed: OpenFeed | None = None,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the relay until ``stop`` is set (or ``duration_s`` passes); returns the exit code.

    ``open_feed`` binds the texture feed when ``config.publish`` asks for one."""
    stop = stop or threading.Event()
    out = out or sys.stdout  # looked up per call, so redirected streams are honoured
    err = err or sys.stderr
    try:
        # A second relay on the port or a bad key file fails at once, not after a server timeout.
        curve, receiver, writer, outputs = _start_locally(config, open_feed)
    except RelayStartError as error:
        print(f"megalive livelink relay: {error}", file=err, flush=True)
        return EXIT_USAGE
    relaying = False
    client: client_module.AvatarClient | None = None
    try:
        client = client_module.AvatarClient(
            address=config.server,
            name="megalive-livelink-relay",
            timeout_s=config.timeout_s,
            max_in_flight=config.max_in_flight,
            curve=curve,
        )
        try:
            info = client.hello()
            session = client.open(avatar=config.avatar, driver="arkit", size=config.output_size)
        except client_module.ServerGoneError as error:
            print(f"megalive livelink relay: server gone: {error}", file=err, flush=True)
            return EXIT_SERVER_GONE
        except client_module.ServerError as error:
            if _is_missing_arkit_input(error):
                print(
                    f"megalive livelink relay: the loaded model has no ARKit input: {config.server} refused the 'arkit' session "
                    f"(server said: {error.message}); serve a model exported with its capture drivers, such as the shipped one",
                    file=err,
                    flush=True,
                )
            else:
                print(f"megalive livelink relay: the server refused the session: {error}", file=err, flush=True)
            return EXIT_REFUSED
        print(
            f"megalive livelink relay: {info.server} at {config.server}, avatar {config.avatar}, arkit session open", file=out, flush=True
        )
        relaying = True
        return _relay_loop(config, client, session, stop, out, err, receiver=receiver, writer=writer, outputs=outputs)
    finally:
        if client is not None:
            client.close()
        receiver.close()
        if writer is not None and not relaying:
            writer.discard()  # nothing was relayed: no empty take left behind
        if outputs is not None and not relaying:
            outputs.close()


def _relay_loop(
    config: RelayConfig,
    client: client_module.AvatarClient,
    session: int,
    stop: threading.Event,
    out: TextIO,
    err: TextIO,
    *,
    receiver: LiveLinkFaceReceiver,
    writer: TakeWriter | None,
    outputs: TextureOutputs | None = None,
) -> int:
    """Relay until stopped; closes ``receiver`` and ``outputs`` and finishes ``writer``'s take."""
    counters = RelayCounters()
    if writer is not None:
        cap_mb = f"{config.record_max_bytes / 1e6:g}"

        def record(packet: bytes) -> None:
            if writer.closed:  # finished at the cap
                counters.unrecorded += 1
                return
            if writer.write(packet):
                return
            counters.unrecorded += 1
            path = writer.close()  # finish it now: the take is complete and safe whatever happens later
            print(
                f"megalive livelink relay: recording stopped: the take reached its {cap_mb} MB cap (--record-max-mb); "
                f"{writer.records} packets in {path}; still relaying",
                file=err,
                flush=True,
            )

        receiver.on_datagram = record
    subject = config.subject or "any subject"
    print(f"megalive livelink relay: listening on UDP {config.listen}:{receiver.port} for {subject}", file=out, flush=True)
    if outputs is not None and outputs.feed is not None:
        print(f"megalive livelink relay: publishing textures on {outputs.feed.address}", file=out, flush=True)
    if outputs is not None and outputs.png is not None:
        print(f"megalive livelink relay: writing textures as PNGs to {outputs.png.directory}", file=out, flush=True)
    started = last_report = time.monotonic()
    reported_forwarded = 0
    last_sent: FaceFrame | None = None
    connected = True
    next_reconnect = 0.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if config.duration_s is not None and now - started >= config.duration_s:
                break
            receiver.poll()
            if outputs is not None:
                outputs.poll()
            try:
                if not connected:
                    if now < next_reconnect:
                        stop.wait(min(0.05, next_reconnect - now))
                        continue
                    client.reconnect()  # blocks at most timeout_s; the receiver keeps only the newest frames
                    connected = True
                    print("megalive livelink relay: reconnected", file=out, flush=True)
                frame = receiver.latest(config.subject)
                if frame is not None and frame is not last_sent:
                    if client.can_send(session):
                        if client.send_frame(session, curves_payload(frame)) is not None:
                            counters.forwarded += 1
                            last_sent = frame
                    else:
                        counters.skipped_busy += 1
                for event in client.poll(timeout_ms=config.poll_ms):
                    if isinstance(event, client_module.Texture):
                        counters.rendered += 1
                        if outputs is not None:
                            outputs.deliver(event, counters)
                    elif isinstance(event, client_module.FrameDropped):
                        counters.dropped += 1
                    else:
                        counters.errors += 1
            except client_module.ServerGoneError as error:
                connected = False
                next_reconnect = time.monotonic() + 1.0
                print(f"megalive livelink relay: server gone: {error}; retrying every second", file=err, flush=True)
            except client_module.ServerError as error:
                print(f"megalive livelink relay: the server refused the session after a reconnect: {error}", file=err, flush=True)
                return EXIT_REFUSED
            now = time.monotonic()
            if now - last_report >= config.progress_interval_s:
                fps = (counters.forwarded - reported_forwarded) / (now - last_report)
                unrecorded = f"  unrecorded {counters.unrecorded}" if counters.unrecorded else ""
                delivered = outputs.progress(counters) if outputs is not None else ""
                print(
                    f"forwarded {counters.forwarded}  {fps:5.1f} fps  rendered {counters.rendered}  dropped {counters.dropped}"
                    f"  errors {counters.errors}  malformed packets {receiver.stats().malformed}{unrecorded}{delivered}",
                    file=out,
                    flush=True,
                )
                png_failure = outputs.png_failure() if outputs is not None else None
                if png_failure is not None:
                    print(f"megalive livelink relay: PNG sequence stopped: {png_failure}; still relaying", file=err, flush=True)
                last_report, reported_forwarded = now, counters.forwarded
    finally:
        receiver.close()
        if writer is not None:
            path = writer.close()
            capped = f" (size cap reached; {counters.unrecorded} later packets not recorded)" if counters.unrecorded else ""
            print(f"megalive livelink relay: recorded {writer.records} packets to {path}{capped}", file=out, flush=True)
        if outputs is not None:
            outputs.close()  # the PNG writer finishes its queue first
            if outputs.feed is not None:
                print(f"megalive livelink relay: published {counters.published} textures", file=out, flush=True)
            if outputs.png is not None:
                png = outputs.png
                missing = f" ({png.not_written} not written{': ' + png.failure if png.failure else ''})" if png.not_written else ""
                print(f"megalive livelink relay: wrote {png.written} PNGs to {png.directory}{missing}", file=out, flush=True)
    print(f"megalive livelink relay: stopped after forwarding {counters.forwarded} frames", file=out, flush=True)
    return EXIT_OK
