"""A tiny PNG encoder (zlib + struct only): UE's embedded Python may lack Pillow and numpy."""

from __future__ import annotations

import struct
import zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {3: 2, 4: 6}  # channels -> PNG colour type (2: RGB, 6: RGBA), 8 bits each


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def encode_png(pixels: bytes | bytearray | memoryview, *, width: int, height: int, channels: int = 4, compress_level: int = 1) -> bytes:
    """Rows of ``width * channels`` bytes, top to bottom, no padding -> PNG file bytes.

    Filter type 0 on every row and a low zlib level: the point is speed, not size."""
    if channels not in _COLOR_TYPES:
        raise ValueError(f"channels must be 3 or 4, got {channels}")
    stride = width * channels
    data = memoryview(pixels).cast("B") if not isinstance(pixels, bytes) else memoryview(pixels)
    if len(data) != stride * height:
        raise ValueError(f"{len(data)} bytes do not make {height} rows of {width}×{channels}")
    raw = b"".join(b"\x00" + data[row * stride : (row + 1) * stride].tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, compress_level)) + _chunk(b"IEND", b"")
