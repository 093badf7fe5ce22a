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
cannot be opened. A take is capped at ``record_max_bytes``; reaching the cap finishes the take and
the relay goes on forwarding.
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .client_shim import client as client_module
from .client_shim import protocol
from .livelink.packet import VALUE_COUNT, FaceFrame
from .livelink.receiver import DEFAULT_BIND_ADDRESS, DEFAULT_PORT, LiveLinkFaceReceiver, PortInUseError
from .livelink.take import DEFAULT_TAKE_MAX_BYTES, TakeWriter

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


@dataclass
class RelayCounters:
    forwarded: int = 0
    rendered: int = 0
    dropped: int = 0
    errors: int = 0
    skipped_busy: int = 0  # new frames not sent because the in-flight window was full
    unrecorded: int = 0  # datagrams received after the take reached its size cap


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


def _start_locally(config: RelayConfig) -> tuple[client_module.CurveClientKeys | None, LiveLinkFaceReceiver, TakeWriter | None]:
    """Everything local, before any network wait: keys, the UDP port, the take. Raises RelayStartError."""
    curve = load_curve_keys(config)
    receiver = bind_receiver(config)
    try:
        writer = open_take(config)
    except RelayStartError:
        receiver.close()
        raise
    return curve, receiver, writer


def run_relay(config: RelayConfig, *, stop: threading.Event | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the relay until ``stop`` is set (or ``duration_s`` passes); returns the exit code."""
    stop = stop or threading.Event()
    out = out or sys.stdout  # looked up per call, so redirected streams are honoured
    err = err or sys.stderr
    try:
        # A second relay on the port or a bad key file fails at once, not after a server timeout.
        curve, receiver, writer = _start_locally(config)
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
        return _relay_loop(config, client, session, stop, out, err, receiver=receiver, writer=writer)
    finally:
        if client is not None:
            client.close()
        receiver.close()
        if writer is not None and not relaying:
            writer.discard()  # nothing was relayed: no empty take left behind


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
) -> int:
    """Relay until stopped; closes ``receiver`` and finishes ``writer``'s take."""
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
                print(
                    f"forwarded {counters.forwarded}  {fps:5.1f} fps  rendered {counters.rendered}  dropped {counters.dropped}"
                    f"  errors {counters.errors}  malformed packets {receiver.stats().malformed}{unrecorded}",
                    file=out,
                    flush=True,
                )
                last_report, reported_forwarded = now, counters.forwarded
    finally:
        receiver.close()
        if writer is not None:
            path = writer.close()
            capped = f" (size cap reached; {counters.unrecorded} later packets not recorded)" if counters.unrecorded else ""
            print(f"megalive livelink relay: recorded {writer.records} packets to {path}{capped}", file=out, flush=True)
    print(f"megalive livelink relay: stopped after forwarding {counters.forwarded} frames", file=out, flush=True)
    return EXIT_OK
