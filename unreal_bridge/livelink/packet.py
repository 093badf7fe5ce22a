"""Live Link Face packet v6: the codec (parse, encode), FaceFrame and FrameTime, PacketError.

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
"""

from __future__ import annotations

import struct
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

try:  # packaged: megalive_bridge/vendor/contract/ (a copy made by `megalive unreal package`)
    from ..vendor.contract import arkit
except ImportError:  # in the repository: unreal_bridge/ has no vendor folder, contract/ is importable
    from contract import arkit

__all__ = [
    "ARKIT_BLENDSHAPES",
    "CURVE_NAMES",
    "MAX_DATAGRAM",
    "MAX_STRING_BYTES",
    "PACKET_ERROR_REASONS",
    "PacketErrorReason",
    "PACKET_VERSION",
    "ROTATION_NAMES",
    "VALUE_COUNT",
    "FaceFrame",
    "FrameTime",
    "PacketError",
    "encode_packet",
    "parse_packet",
]

PACKET_VERSION = 6

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
# Largest UDP payload: the receiver reads into a buffer this size (so no datagram is ever truncated) and a take
# record never holds more.
MAX_DATAGRAM = 65535

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
