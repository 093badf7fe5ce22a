"""MegaLive wire protocol v1 (DESIGN §3).

Every message is a ZeroMQ multipart list ``[header, buffer 0, buffer 1, ...]``:

- ``header`` is a msgpack map ``{"v": 1, "op": str, "id": int, ..., "buffers": [descriptor, ...]}``;
- each buffer is its own frame, described by ``{"dtype": "|u1" | "<f4", "shape": [h, w, c]}`` (raw
  pixels) or ``{"codec": "jpeg" | "png"}`` (an encoded image). Pixels never go through msgpack.

The receiver checks the dtype against an allow-list and ``prod(shape) * itemsize == len(frame)``
before anything looks at the bytes; msgpack is unpacked with explicit limits, no ext types and
``strict_map_key``. Never pickle.

This file depends on msgpack alone (numpy is optional and imported lazily), because the Blender
extension and the Unreal bridge ship copies of it next to ``client.py`` (the client package, client/vendor.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1

# Requests a client may send, and the reply op that answers each.
REQUEST_OPS = ("hello", "avatars", "open", "frame", "close", "stats", "enroll", "cancel_refinement")
REPLY_OPS = ("hello", "avatars", "open", "texture", "dropped", "close", "stats", "enroll", "cancel_refinement", "error")

# Error codes of the `error` reply. `unknown_session` is the v1 code for a session id the server
# does not hold (a restarted server, a closed session); the rest are DESIGN §3's list.
ERROR_CODES = (
    "bad_request",
    "unknown_avatar",
    "unknown_session",
    "too_large",
    "unsupported_version",
    "busy",
    "internal",
)

DRIVER_KINDS = ("image", "landmarks", "arkit")

# An `arkit` frame is one float32 buffer of the 61 values of contract.arkit.ARKIT_CURVES in that order (Live Link
# Face's packet order): the 52 ARKit blendshapes in [0, 1], then head and eye rotations in radians.
# A `landmarks` frame is one float32 buffer N×2 (or N×3, z ignored) with N = 68 (iBUG order) or 478
# (mediapipe face mesh): x right, y down, in [0, 1] over the aligned driver crop.
LANDMARK_COUNTS = (68, 478)
OUTPUT_FORMATS = ("rgba8", "rgb8", "jpeg", "png")  # png: lossless RGBA, C2PA-signed when the server has a signing key
CROP_MODES = ("auto", "none")
CODECS = ("jpeg", "png")

# dtype string -> item size in bytes. Anything else is refused before the bytes are touched.
DTYPE_ITEMSIZE = {"|u1": 1, "<f4": 4}

MAX_DIMS = 4


class ProtocolError(Exception):
    """A message that breaks the protocol; ``code`` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, *, request_id: int | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Limits:
    """Upper bounds a receiver enforces. Both ends use the same defaults."""

    max_header_bytes: int = 64 * 1024
    max_buffer_bytes: int = 32 * 1024 * 1024  # one 4096×2048 RGBA8 texture
    max_buffers: int = 16
    max_items: int = 4096  # longest msgpack array / map inside a header
    max_str_bytes: int = 4096

    @property
    def max_frame_bytes(self) -> int:
        """ZeroMQ's MAXMSGSIZE, which libzmq applies to each frame as its length arrives: a peer that
        announces a bigger frame is disconnected before any of it is buffered."""
        return max(self.max_buffer_bytes, self.max_header_bytes)

    @property
    def max_parts(self) -> int:
        """Frames in one message: the header and its buffers."""
        return 1 + self.max_buffers

    @property
    def max_message_bytes(self) -> int:
        """All frames of one message together (the header and every buffer at its limit)."""
        return self.max_header_bytes + self.max_buffers * self.max_buffer_bytes


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class RawBuffer:
    """An uncompressed array: dtype from DTYPE_ITEMSIZE, C-order bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: memoryview

    def array(self):
        """A read-only numpy view on the bytes (no copy)."""
        import numpy as np

        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)


@dataclass(frozen=True)
class EncodedBuffer:
    """An encoded image (jpeg or png) carried as its file bytes."""

    codec: str
    data: memoryview


Buffer = RawBuffer | EncodedBuffer


@dataclass(frozen=True)
class Message:
    """A decoded message: the header map (with "buffers" removed) and its buffers."""

    op: str
    request_id: int
    header: Mapping[str, Any]
    buffers: tuple[Buffer, ...] = field(default=())

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)


# ------------------------------------------------------------------------------------------------
# Encoding


def raw_buffer_from_array(array: Any) -> RawBuffer:
    """Wrap a numpy array (uint8 or float32) as a RawBuffer without copying when it is C-contiguous."""
    import numpy as np

    array = np.ascontiguousarray(array)
    dtype = array.dtype.str
    if dtype == "|b1" or dtype not in DTYPE_ITEMSIZE:
        raise ValueError(f"dtype {array.dtype} is not allowed on the wire (allowed: {sorted(DTYPE_ITEMSIZE)})")
    flat_bytes = array.reshape(-1).view(np.uint8)  # 1-D byte view; works for empty arrays too
    return RawBuffer(dtype=dtype, shape=tuple(int(n) for n in array.shape), data=memoryview(flat_bytes))


def raw_buffer_from_bytes(data: bytes | bytearray | memoryview, *, dtype: str, shape: Sequence[int]) -> RawBuffer:
    """Wrap plain bytes (no numpy needed) as a RawBuffer, checking their size against the shape."""
    buffer = RawBuffer(dtype=dtype, shape=tuple(int(n) for n in shape), data=byte_view(data))
    _check_raw(buffer.dtype, list(buffer.shape), len(buffer.data), DEFAULT_LIMITS)
    return buffer


def byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat unsigned-byte view of any buffer, without copying."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _descriptor(buffer: Buffer) -> dict[str, Any]:
    if isinstance(buffer, RawBuffer):
        return {"dtype": buffer.dtype, "shape": list(buffer.shape)}
    return {"codec": buffer.codec}


def encode(header: Mapping[str, Any], buffers: Iterable[Buffer] = ()) -> list[bytes | memoryview]:
    """Build the multipart frames of one message. ``header`` must hold "op" and "id"."""
    buffers = tuple(buffers)
    full = {"v": PROTOCOL_VERSION, **header, "buffers": [_descriptor(b) for b in buffers]}
    if full.get("op") not in REQUEST_OPS + REPLY_OPS:
        raise ValueError(f"unknown op {full.get('op')!r}")
    return [msgpack.packb(full, use_bin_type=True), *(b.data for b in buffers)]


def error_frames(code: str, message: str, *, request_id: int | None) -> list[bytes | memoryview]:
    """The frames of an ``error`` reply."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return encode({"op": "error", "id": request_id, "code": code, "message": message})


# ------------------------------------------------------------------------------------------------
# Decoding


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError("msgpack ext types are not allowed")


def unpack_header(raw: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Unpack a header with explicit limits. Raises ProtocolError(bad_request / too_large)."""
    if len(raw) > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header of {len(raw)} bytes exceeds {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limits.max_str_bytes,
            max_bin_len=limits.max_str_bytes,
            max_array_len=limits.max_items,
            max_map_len=limits.max_items,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData) as error:
        raise ProtocolError("bad_request", f"header is not valid msgpack: {error}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_request", f"header must be a map, not {type(header).__name__}")
    return header


def _check_raw(dtype: Any, shape: Any, nbytes: int, limits: Limits, request_id: int | None = None) -> tuple[int, ...]:
    # isinstance first: a list or map is unhashable, and `in` on a dict would raise TypeError.
    if not isinstance(dtype, str) or dtype not in DTYPE_ITEMSIZE:
        raise ProtocolError("bad_request", f"dtype {dtype!r} not allowed (allowed: {sorted(DTYPE_ITEMSIZE)})", request_id=request_id)
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ProtocolError("bad_request", f"shape must be 1-{MAX_DIMS} non-negative ints, got {shape!r}", request_id=request_id)
    expected = math.prod(shape) * DTYPE_ITEMSIZE[dtype]
    if expected != nbytes:
        raise ProtocolError(
            "bad_request", f"buffer has {nbytes} bytes but shape {shape} of {dtype} needs {expected}", request_id=request_id
        )
    return tuple(shape)


def decode(frames: Sequence[bytes | memoryview], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse and validate one multipart message. Raises ProtocolError with the request id when known."""
    if not frames:
        raise ProtocolError("bad_request", "empty message")
    header = unpack_header(frames[0], limits)
    request_id = header.get("id")
    if request_id is not None and (not isinstance(request_id, int) or isinstance(request_id, bool)):
        raise ProtocolError("bad_request", "id must be an integer")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version", f"protocol v{version!r} not supported; this end speaks v{PROTOCOL_VERSION}", request_id=request_id
        )
    op = header.get("op")
    if op not in REQUEST_OPS + REPLY_OPS:
        raise ProtocolError("bad_request", f"unknown op {op!r}", request_id=request_id)
    if request_id is None and op != "error":
        raise ProtocolError("bad_request", "missing request id")
    descriptors = header.pop("buffers", [])
    if not isinstance(descriptors, list) or len(descriptors) > limits.max_buffers:
        raise ProtocolError("bad_request", f"buffers must be a list of at most {limits.max_buffers}", request_id=request_id)
    payload = frames[1:]
    if len(payload) != len(descriptors):
        raise ProtocolError("bad_request", f"header describes {len(descriptors)} buffers but {len(payload)} arrived", request_id=request_id)
    buffers: list[Buffer] = []
    for descriptor, frame in zip(descriptors, payload):
        data = byte_view(frame)
        if len(data) > limits.max_buffer_bytes:
            raise ProtocolError("too_large", f"buffer of {len(data)} bytes exceeds {limits.max_buffer_bytes}", request_id=request_id)
        if not isinstance(descriptor, dict):
            raise ProtocolError("bad_request", "buffer descriptor must be a map", request_id=request_id)
        if "codec" in descriptor:
            if not isinstance(descriptor["codec"], str) or descriptor["codec"] not in CODECS:
                raise ProtocolError("bad_request", f"codec {descriptor['codec']!r} not supported", request_id=request_id)
            buffers.append(EncodedBuffer(codec=descriptor["codec"], data=data))
        else:
            shape = _check_raw(descriptor.get("dtype"), descriptor.get("shape"), len(data), limits, request_id)
            buffers.append(RawBuffer(dtype=descriptor["dtype"], shape=shape, data=data))
    return Message(op=op, request_id=request_id if request_id is not None else -1, header=header, buffers=tuple(buffers))


# ------------------------------------------------------------------------------------------------
# Field helpers shared by both ends


def require(message: Message, key: str, kind: type | tuple[type, ...], *, choices: Sequence[Any] | None = None) -> Any:
    """A required header field of the given type (and value set); ProtocolError(bad_request) if not."""
    value = message.header.get(key)
    if value is None or not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ProtocolError(
            "bad_request", f"{message.op}: field {key!r} is missing or not {_type_names(kind)}", request_id=message.request_id
        )
    if choices is not None and value not in choices:
        raise ProtocolError("bad_request", f"{message.op}: {key}={value!r} not one of {list(choices)}", request_id=message.request_id)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kind))
