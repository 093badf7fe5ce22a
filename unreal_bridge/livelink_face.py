"""Live Link Face (packet v6): parser, encoder, non-blocking UDP receiver, take files.

Standard library and contract.arkit only: this module runs in the standalone relay and inside Unreal's
embedded Python, so it must import without Unreal, numpy or torch (DESIGN §8).

Packet v6 (one UDP datagram, big-endian, default port 11111)
------------------------------------------------------------

====================  ==============  =======================================================
field                 type            notes
====================  ==============  =======================================================
version               u8              must be 6
device id length      i32             0 .. MAX_STRING_BYTES; read it, never assume 36
device id             UTF-8 bytes     ``length`` bytes
subject length        i32             0 .. MAX_STRING_BYTES
subject name          UTF-8 bytes     ``length`` bytes
frame number          i32             frame time: ``frame``
sub-frame             f32             frame time: ``sub_frame``
rate numerator        i32             frame rate = numerator / denominator (e.g. 60 / 1)
rate denominator      i32
value count           u8              must be 61
values                61 x f32        52 ARKit blendshapes (``ARKIT_BLENDSHAPES`` order), then
                                      head yaw/pitch/roll, left eye yaw/pitch/roll,
                                      right eye yaw/pitch/roll (``ROTATION_NAMES``)
====================  ==============  =======================================================

A minimal packet (empty id and subject) is 1 + 4 + 4 + 16 + 1 + 244 = 270 bytes.

Decisions
---------
* Trailing bytes after the 61 values are rejected (reason ``"trailing"``). The v6 layout has no
  extension area, so extra bytes mean a corrupted or concatenated datagram, or a different layout
  that still claims version 6; accepting it would silently misread curves.
* Non-finite floats (NaN, +-inf) are passed through unchanged. The parser decodes the wire
  faithfully; range and finiteness are validated by the consumer (the server validates every
  driver payload, DESIGN §3), which is also where such values can be reported per session.
* Take files tolerate a truncated *final* record (a crashed recording still replays everything
  it completed); pass ``strict=True`` to :func:`read_take` to make that an error instead. A bad
  magic line or a corrupt record (absurd length, non-finite time) always raises ``ValueError``.

Take file format (``megalive livelink replay FILE``)
----------------------------------------------------
``b"MEGALIVE-LLF-TAKE 1\\n"`` followed by records, each: f64 receive time in seconds since the
recording started, u32 packet length, then the raw packet bytes (all big-endian). Records are
appended as they arrive, so the file can be written incrementally; :class:`TakeWriter` writes to
``NAME.partial`` and renames it to ``NAME`` only when closed cleanly. A take is capped in size
(``DEFAULT_TAKE_MAX_BYTES`` unless told otherwise): a UDP flood must not fill the disk.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import struct
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

try:  # packaged: megalive_bridge/vendor/contract/ (a copy made by `megalive unreal package`)
    from .vendor.contract import arkit
except ImportError:  # in the repository: unreal_bridge/ has no vendor folder, contract/ is importable
    from contract import arkit

__all__ = [
    "ARKIT_BLENDSHAPES",
    "CURVE_NAMES",
    "DEFAULT_BIND_ADDRESS",
    "DEFAULT_PORT",
    "DEFAULT_TAKE_MAX_BYTES",
    "MAX_STRING_BYTES",
    "PACKET_ERROR_REASONS",
    "PacketErrorReason",
    "PACKET_VERSION",
    "ROTATION_NAMES",
    "TAKE_MAGIC",
    "VALUE_COUNT",
    "FaceFrame",
    "FrameTime",
    "LiveLinkFaceReceiver",
    "PacketError",
    "PortInUseError",
    "ReceiverStats",
    "TakeWriter",
    "encode_packet",
    "parse_packet",
    "read_take",
    "replay_take",
]

PACKET_VERSION = 6
DEFAULT_PORT = 11111
# Loopback unless asked: a receiver on every interface takes packets from anyone on the network.
# A phone on the LAN needs the LAN address or 0.0.0.0, given explicitly.
DEFAULT_BIND_ADDRESS = "127.0.0.1"

# The curve names are contract's (one copy for the protocol, the server, the models and both hosts); the names this
# module has always exported stay as aliases.
ARKIT_BLENDSHAPES: tuple[str, ...] = arkit.ARKIT_BLENDSHAPES
ROTATION_NAMES: tuple[str, ...] = arkit.ARKIT_ROTATIONS
CURVE_NAMES: tuple[str, ...] = arkit.ARKIT_CURVES
VALUE_COUNT = len(CURVE_NAMES)  # 61
assert len(ARKIT_BLENDSHAPES) == 52 and VALUE_COUNT == 61

# Live Link Face ids are 36-character UUIDs and subjects short names; 1 KiB each is generous and
# keeps a hostile length claim from costing anything (and bounds the receiver's subject table).
MAX_STRING_BYTES = 1024

_U8 = struct.Struct(">B")
_I32 = struct.Struct(">i")
_FRAME_TIME = struct.Struct(">ifii")  # frame, sub-frame, rate numerator, rate denominator
_VALUES = struct.Struct(f">{VALUE_COUNT}f")
_CURVE_INDEX: Mapping[str, int] = types.MappingProxyType({name: index for index, name in enumerate(CURVE_NAMES)})

# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameTime:
    """Live Link frame time: a frame number plus fraction at a rational frame rate."""

    frame: int
    sub_frame: float
    rate_numerator: int
    rate_denominator: int

    @property
    def rate(self) -> float:
        """Frames per second; 0.0 when the rate is not positive (unknown)."""
        if self.rate_numerator <= 0 or self.rate_denominator <= 0:
            return 0.0
        return self.rate_numerator / self.rate_denominator

    @property
    def seconds(self) -> float:
        """(frame + sub_frame) / rate; 0.0 when the rate is zero or negative (no timebase)."""
        rate = self.rate
        if rate == 0.0:
            return 0.0
        return (self.frame + self.sub_frame) / rate


@dataclass(frozen=True)
class FaceFrame:
    """One decoded Live Link Face packet: 52 blendshapes then 9 rotations, in wire order."""

    device_id: str
    subject: str
    time: FrameTime
    values: tuple[float, ...]  # VALUE_COUNT (61) floats, CURVE_NAMES order

    def __post_init__(self) -> None:
        if not isinstance(self.values, tuple):
            object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) != VALUE_COUNT:
            raise ValueError(f"FaceFrame needs {VALUE_COUNT} values, got {len(self.values)}")

    @classmethod
    def from_curves(cls, *, device_id: str, subject: str, time: FrameTime, curves: Mapping[str, float]) -> FaceFrame:
        """Build a frame from named curves (any ARKit source); missing curves are 0.0."""
        unknown = [name for name in curves if name not in _CURVE_INDEX]
        if unknown:
            raise ValueError(f"unknown curve names: {sorted(unknown)}")
        values = tuple(float(curves.get(name, 0.0)) for name in CURVE_NAMES)
        return cls(device_id=device_id, subject=subject, time=time, values=values)

    @property
    def curves(self) -> Mapping[str, float]:
        """Read-only name -> value mapping over all 61 curves."""
        return types.MappingProxyType(dict(zip(CURVE_NAMES, self.values)))

    @property
    def blendshapes(self) -> tuple[float, ...]:
        """The 52 ARKit blendshape weights, ARKIT_BLENDSHAPES order."""
        return self.values[: len(ARKIT_BLENDSHAPES)]

    @property
    def rotations(self) -> tuple[float, ...]:
        """The 9 rotations, ROTATION_NAMES order (head, left eye, right eye; yaw/pitch/roll)."""
        return self.values[len(ARKIT_BLENDSHAPES) :]

    @property
    def head_rotation(self) -> tuple[float, float, float]:
        """(yaw, pitch, roll) of the head."""
        yaw, pitch, roll = self.rotations[0:3]
        return (yaw, pitch, roll)


# --------------------------------------------------------------------------------------------
# Parser / encoder
# --------------------------------------------------------------------------------------------

PacketErrorReason = Literal["short", "version", "length", "utf8", "count", "trailing"]
PACKET_ERROR_REASONS: tuple[PacketErrorReason, ...] = (
    "short",
    "version",
    "length",
    "utf8",
    "count",
    "trailing",
)


class PacketError(ValueError):
    """A malformed packet. ``reason`` is a short code from PACKET_ERROR_REASONS (for counters)."""

    def __init__(self, reason: PacketErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: PacketErrorReason = reason
        self.detail = detail


def _read_string(view: memoryview, offset: int, field: str) -> tuple[str, int]:
    size = len(view)
    if size - offset < _I32.size:
        raise PacketError("short", f"packet ends before the {field} length at byte {offset}")
    (length,) = _I32.unpack_from(view, offset)
    offset += _I32.size
    if length < 0 or length > MAX_STRING_BYTES:
        raise PacketError("length", f"{field} length {length} outside 0..{MAX_STRING_BYTES}")
    if size - offset < length:
        raise PacketError("short", f"{field} claims {length} bytes, {size - offset} left at byte {offset}")
    try:
        text = str(view[offset : offset + length], "utf-8")
    except UnicodeDecodeError as error:
        raise PacketError("utf8", f"{field} is not valid UTF-8 ({error.reason})") from None
    return text, offset + length


def parse_packet(data: bytes | bytearray | memoryview) -> FaceFrame:
    """Decode one v6 datagram. Raises PacketError (and nothing else) for any malformed input."""
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    size = len(view)
    if size < 1:
        raise PacketError("short", "empty packet")
    version = view[0]
    if version != PACKET_VERSION:
        raise PacketError("version", f"version {version}, expected {PACKET_VERSION}")
    offset = 1
    device_id, offset = _read_string(view, offset, "device id")
    subject, offset = _read_string(view, offset, "subject name")
    if size - offset < _FRAME_TIME.size + _U8.size:
        raise PacketError("short", f"packet ends inside the frame time at byte {offset}")
    frame, sub_frame, numerator, denominator = _FRAME_TIME.unpack_from(view, offset)
    offset += _FRAME_TIME.size
    count = view[offset]
    offset += _U8.size
    if count != VALUE_COUNT:
        raise PacketError("count", f"value count {count}, expected {VALUE_COUNT}")
    if size - offset < _VALUES.size:
        raise PacketError("short", f"{size - offset} value bytes, expected {_VALUES.size}")
    values = _VALUES.unpack_from(view, offset)
    offset += _VALUES.size
    if offset != size:
        raise PacketError("trailing", f"{size - offset} bytes after the values")
    return FaceFrame(
        device_id=device_id,
        subject=subject,
        time=FrameTime(
            frame=frame,
            sub_frame=sub_frame,
            rate_numerator=numerator,
            rate_denominator=denominator,
        ),
        values=values,
    )


def _encode_string(text: str, field: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > MAX_STRING_BYTES:
        raise ValueError(f"{field} is {len(raw)} bytes of UTF-8, at most {MAX_STRING_BYTES}")
    return _I32.pack(len(raw)) + raw


def encode_packet(frame: FaceFrame) -> bytes:
    """Encode a frame as a v6 datagram; the inverse of parse_packet.

    Exact for every frame parse_packet returns; other floats are rounded to f32 on the wire.
    Raises ValueError for values that cannot be encoded (overlong strings, out-of-range ints).
    """
    time_ = frame.time
    try:
        return b"".join(
            (
                _U8.pack(PACKET_VERSION),
                _encode_string(frame.device_id, "device id"),
                _encode_string(frame.subject, "subject name"),
                _FRAME_TIME.pack(time_.frame, time_.sub_frame, time_.rate_numerator, time_.rate_denominator),
                _U8.pack(VALUE_COUNT),
                _VALUES.pack(*frame.values),
            )
        )
    except (struct.error, OverflowError) as error:
        raise ValueError(f"frame cannot be encoded: {error}") from None


# --------------------------------------------------------------------------------------------
# Receiver
# --------------------------------------------------------------------------------------------

# Largest UDP payload; receiving into a buffer this size means no datagram is ever truncated.
_MAX_DATAGRAM = 65535


@dataclass(frozen=True)
class ReceiverStats:
    """Counters of a LiveLinkFaceReceiver since it was created."""

    received: int  # datagrams read from the socket (good and malformed)
    accepted: int  # parsed and stored as the newest frame of their subject
    malformed: int  # failed to parse
    malformed_by_reason: Mapping[str, int]  # PacketError.reason -> count (read-only)
    dropped_subjects: int  # good packets dropped because the subject table was full
    subjects: int  # subjects currently held


class PortInUseError(OSError):
    """The UDP port is already bound by another receiver (a second relay, the editor, the app)."""

    def __init__(self, *, address: str, port: int) -> None:
        super().__init__(
            f"UDP port {port} is already in use on {address} (another relay, the editor bridge, or Unreal's own Live Link source?)"
        )
        self.errno = errno.EADDRINUSE
        self.address = address
        self.port = port


def _is_address_in_use(error: OSError) -> bool:
    # Windows reports WSAEADDRINUSE (10048) in winerror; errno may hold either value.
    return error.errno in (errno.EADDRINUSE, 10048) or getattr(error, "winerror", None) == 10048


class LiveLinkFaceReceiver:
    """Non-blocking Live Link Face UDP receiver that keeps the newest frame per subject.

    Call ``poll()`` from any loop (an editor tick, a relay loop); it reads at most
    ``max_packets_per_poll`` datagrams and never blocks, so a flood costs bounded work per call.
    "Newest" means last to arrive: Live Link frame numbers are timecode-based and restart with
    the app, so arrival order is the robust choice (loopback and LANs do not reorder in practice).
    """

    def __init__(
        self,
        *,
        bind_address: str = DEFAULT_BIND_ADDRESS,
        port: int = DEFAULT_PORT,
        max_packets_per_poll: int = 1024,
        max_subjects: int = 64,
        receive_buffer_bytes: int = 1 << 20,
        on_datagram: Callable[[bytes], object] | None = None,
    ) -> None:
        """Bind a UDP socket (``port=0`` picks a free port; read it back from ``.port``).

        Binds loopback by default; pass ``bind_address="0.0.0.0"`` (or a LAN address) for a phone.
        A port another socket holds raises :class:`PortInUseError` instead of sharing it.

        ``max_subjects`` bounds the subject table: packets from further subjects are dropped and
        counted. ``on_datagram`` sees every raw datagram, good or malformed, before parsing (e.g.
        ``TakeWriter.write`` to record a take); its own exceptions are not swallowed.
        """
        if max_packets_per_poll < 1:
            raise ValueError("max_packets_per_poll must be >= 1")
        if max_subjects < 1:
            raise ValueError("max_subjects must be >= 1")
        self.max_packets_per_poll = max_packets_per_poll
        self.max_subjects = max_subjects
        self.on_datagram = on_datagram
        family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # No SO_REUSEADDR / SO_REUSEPORT: on UDP they let a second receiver bind the same port
            # and one of the two then silently gets nothing. UDP has no TIME_WAIT, so a restarted
            # relay rebinds at once without them. Windows lets a SO_REUSEADDR socket steal a port
            # unless the holder claims it exclusively.
            if sys.platform == "win32" and hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            # A modest buffer absorbs bursts between polls (a phone sends ~60 x 300 B/s).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
            sock.bind((bind_address, port))
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            if _is_address_in_use(error):
                raise PortInUseError(address=bind_address, port=port) from error
            raise
        self._socket: socket.socket | None = sock
        self.bind_address: str = bind_address
        self.port: int = sock.getsockname()[1]
        self._buffer = bytearray(_MAX_DATAGRAM)
        self._frames: dict[str, FaceFrame] = {}
        self._newest: FaceFrame | None = None
        self._received = 0
        self._accepted = 0
        self._malformed_by_reason: dict[str, int] = {}
        self._dropped_subjects = 0

    # -- reading -------------------------------------------------------------------------------

    def poll(self) -> int:
        """Drain up to max_packets_per_poll datagrams without blocking; return how many were read.

        Malformed packets are counted and skipped, never raised. Returns 0 once closed.
        """
        sock = self._socket
        if sock is None:
            return 0
        buffer = self._buffer
        view = memoryview(buffer)
        processed = 0
        while processed < self.max_packets_per_poll:
            try:
                size = sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                break  # EAGAIN / EWOULDBLOCK: nothing more queued right now
            except ConnectionResetError:
                # Windows reports an earlier ICMP port-unreachable on the next recv; harmless.
                processed += 1  # still counts as work, so the loop stays bounded
                continue
            processed += 1
            self._received += 1
            datagram = view[:size]
            if self.on_datagram is not None:
                self.on_datagram(bytes(datagram))
            try:
                frame = parse_packet(datagram)
            except PacketError as error:
                counts = self._malformed_by_reason
                counts[error.reason] = counts.get(error.reason, 0) + 1
                continue
            self._store(frame)
        return processed

    def _store(self, frame: FaceFrame) -> None:
        frames = self._frames
        if frame.subject not in frames and len(frames) >= self.max_subjects:
            self._dropped_subjects += 1
            return
        frames[frame.subject] = frame
        self._newest = frame
        self._accepted += 1

    # -- queries -------------------------------------------------------------------------------

    def latest(self, subject: str | None = None) -> FaceFrame | None:
        """Newest frame of ``subject``, or the newest frame of any subject when None."""
        if subject is None:
            return self._newest
        return self._frames.get(subject)

    def subjects(self) -> tuple[str, ...]:
        """Subjects held, in the order first seen."""
        return tuple(self._frames)

    def forget(self, subject: str) -> None:
        """Drop a subject's frame, freeing its slot in the table."""
        frame = self._frames.pop(subject, None)
        if frame is not None and frame is self._newest:
            self._newest = None

    def clear(self) -> None:
        """Drop every held frame (counters are kept)."""
        self._frames.clear()
        self._newest = None

    def stats(self) -> ReceiverStats:
        by_reason = dict(self._malformed_by_reason)
        return ReceiverStats(
            received=self._received,
            accepted=self._accepted,
            malformed=sum(by_reason.values()),
            malformed_by_reason=types.MappingProxyType(by_reason),
            dropped_subjects=self._dropped_subjects,
            subjects=len(self._frames),
        )

    def fileno(self) -> int:
        """The socket's descriptor, for selectors; -1 once closed."""
        return -1 if self._socket is None else self._socket.fileno()

    # -- lifetime ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._socket is None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> LiveLinkFaceReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Takes: record and replay
# --------------------------------------------------------------------------------------------

TAKE_MAGIC = b"MEGALIVE-LLF-TAKE 1\n"
_RECORD_HEADER = struct.Struct(">dI")  # receive time (s since start), packet length
# A phone sends ~60 x 320 B/s of records (about 70 MB an hour); a flood fills this in seconds, not the disk.
DEFAULT_TAKE_MAX_BYTES = 256_000_000


def _partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class TakeWriter:
    """Appends received packets to a take file of at most ``max_bytes`` bytes.

    Records go to ``NAME.partial`` as they arrive (flushed per record, so a crash loses at most
    the record being written); ``close()`` fsyncs and renames it to ``NAME``. Leaving a ``with``
    block by an exception keeps the ``.partial`` file, which :func:`read_take` can still replay.
    An existing ``NAME.partial`` (an earlier interrupted take) is never overwritten: opening
    raises FileExistsError. Once a record would take the file past ``max_bytes``, ``write()``
    returns False for it and every later packet (``full`` is set, ``refused`` counts them); the
    take stays a complete prefix of what arrived.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = DEFAULT_TAKE_MAX_BYTES,
    ) -> None:
        if max_bytes < len(TAKE_MAGIC):
            raise ValueError(f"max_bytes must be at least {len(TAKE_MAGIC)} (the take header)")
        self.path = Path(path)
        self.partial_path = _partial_path(self.path)
        self.max_bytes = max_bytes
        self._clock = clock
        try:
            # "x": never truncate what an interrupted recording left behind.
            self._file: BinaryIO | None = open(self.partial_path, "xb")
        except FileExistsError:
            raise FileExistsError(
                errno.EEXIST,
                "an interrupted take is there; replay, rename or delete it first",
                os.fspath(self.partial_path),
            ) from None
        self._file.write(TAKE_MAGIC)
        self._file.flush()
        self._start = clock()
        self.records = 0
        self.bytes_written = len(TAKE_MAGIC)
        self.full = False  # the cap was reached: nothing more is written
        self.refused = 0  # packets not written because of the cap

    def write(self, packet: bytes, received_at: float | None = None) -> bool:
        """Append one packet; ``received_at`` is seconds since start (default: the clock).

        Returns False (and writes nothing) once the take has reached ``max_bytes``.
        """
        if self._file is None:
            raise ValueError("take writer is closed")
        if len(packet) > _MAX_DATAGRAM:
            raise ValueError(f"packet of {len(packet)} bytes is larger than a UDP datagram")
        at = self._clock() - self._start if received_at is None else float(received_at)
        if not math.isfinite(at):
            raise ValueError(f"receive time {at} is not finite")
        size = _RECORD_HEADER.size + len(packet)
        if self.full or self.bytes_written + size > self.max_bytes:
            self.full = True  # later, smaller packets are refused too: no gaps inside a take
            self.refused += 1
            return False
        self._file.write(_RECORD_HEADER.pack(at, len(packet)) + bytes(packet))
        self._file.flush()
        self.records += 1
        self.bytes_written += size
        return True

    @property
    def closed(self) -> bool:
        return self._file is None

    def close(self) -> Path:
        """Finish the take: fsync, rename NAME.partial -> NAME; returns the final path."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.flush()
                os.fsync(file.fileno())
            finally:
                file.close()
            os.replace(self.partial_path, self.path)
        return self.path

    def abandon(self) -> None:
        """Stop writing and leave the take as NAME.partial (what an interrupted recording is)."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def discard(self) -> None:
        """Stop writing and delete NAME.partial: for a take that never got going (no session)."""
        if self._file is not None:
            self.abandon()
            self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> TakeWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def read_take(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[tuple[float, bytes]]:
    """Yield (seconds since start, packet bytes) from a take file, in file order.

    Raises ValueError on a bad magic line or a corrupt record. A truncated final record (a
    crashed recording) ends the take quietly, unless ``strict`` is set.
    """
    with open(path, "rb") as file:
        magic = file.read(len(TAKE_MAGIC))
        if magic != TAKE_MAGIC:
            raise ValueError(f"{os.fspath(path)!r} is not a MegaLive Live Link take (bad magic)")
        index = 0
        while True:
            header = file.read(_RECORD_HEADER.size)
            if not header:
                return
            if len(header) < _RECORD_HEADER.size:
                if strict:
                    raise ValueError(f"take truncated inside the header of record {index}")
                return
            at, length = _RECORD_HEADER.unpack(header)
            if length > _MAX_DATAGRAM or not math.isfinite(at):
                raise ValueError(f"take record {index} is corrupt (time {at}, length {length})")
            packet = file.read(length)
            if len(packet) < length:
                if strict:
                    raise ValueError(f"take truncated inside the packet of record {index}")
                return
            yield at, packet
            index += 1


def _udp_sender(address: tuple[str, int]) -> tuple[Callable[[bytes], object], socket.socket]:
    host, port = address
    family, _, _, _, resolved = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    return (lambda packet: sock.sendto(packet, resolved)), sock


def replay_take(
    path: str | os.PathLike[str],
    *,
    address: tuple[str, int],
    speed: float = 1.0,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    send: Callable[[bytes], object] | None = None,
) -> int:
    """Send a take's packets to ``address`` over UDP at their recorded timing; return the count.

    ``speed`` scales time (2.0 = twice as fast, ``math.inf`` = no waiting). Timing follows an
    absolute schedule from ``clock`` so send overhead never accumulates as drift; inject ``sleep``
    and ``clock`` together in tests (a fake sleep that advances a fake clock). ``send`` replaces
    the UDP socket (it receives each packet's bytes).
    """
    if not speed > 0:  # also rejects NaN
        raise ValueError(f"speed must be > 0, got {speed}")
    sock: socket.socket | None = None
    if send is None:
        send, sock = _udp_sender(address)
    try:
        sent = 0
        start = clock()
        for at, packet in read_take(path):
            delay = start + at / speed - clock()
            if delay > 0:
                sleep(delay)
            send(packet)
            sent += 1
        return sent
    finally:
        if sock is not None:
            sock.close()
