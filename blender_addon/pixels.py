"""Pixel conversions between the wire (top-down rows, uint8) and Blender images (bottom-up rows,
float RGBA), and a small PNG writer. bpy-free: tested without Blender.

Why our own PNG writer: a baked frame must hold exactly the server's 8-bit RGBA (straight alpha),
written under a temporary name and renamed; going through a bpy Image would add a colour-managed
float round trip and tie the bake to the main thread's image data.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

# Lookup table: uint8 -> float32 in [0, 1]; indexing with it is cheaper than astype + divide.
_UNIT_FLOAT = (np.arange(256, dtype=np.float32) / np.float32(255.0)).astype(np.float32)


def texture_to_blender_pixels(texture: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """H×W×{3,4} uint8 (top row first) -> flat float32 RGBA, bottom row first, for Image.pixels.

    ``out`` (H*W*4 float32) is reused when given, so the live loop allocates nothing per frame."""
    if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] not in (3, 4):
        raise ValueError(f"expected an H×W×3/4 uint8 texture, got {texture.dtype} {texture.shape}")
    height, width, channels = texture.shape
    if out is None or out.shape != (height * width * 4,) or out.dtype != np.float32:
        out = np.empty(height * width * 4, dtype=np.float32)
    view = out.reshape(height, width, 4)  # H×W×4 view on the flat buffer
    np.take(_UNIT_FLOAT, texture[::-1], out=view[..., :channels])  # flip: Blender rows are bottom-up
    if channels == 3:
        view[..., 3] = 1.0
    return out


def blender_pixels_to_rgb8(pixels: np.ndarray, *, width: int, height: int, channels: int = 4) -> np.ndarray:
    """Flat float pixels of a Blender image (bottom row first) -> H×W×3 uint8, top row first."""
    image = np.asarray(pixels, dtype=np.float32).reshape(height, width, channels)[::-1, :, :3]
    return np.ascontiguousarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8))


def encode_png(rgba: np.ndarray) -> bytes:
    """PNG bytes of an H×W×{3,4} uint8 image (8-bit, RGB or RGBA, top row first)."""
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] not in (3, 4):
        raise ValueError(f"expected an H×W×3/4 uint8 image, got {rgba.dtype} {rgba.shape}")
    height, width, channels = rgba.shape
    color_type = 6 if channels == 4 else 2
    rows = np.zeros((height, 1 + width * channels), dtype=np.uint8)  # filter byte 0 (None) per row
    rows[:, 1:] = rgba.reshape(height, width * channels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b"")


def png_size(data: bytes | memoryview) -> tuple[int, int]:
    """(width, height) from a PNG's header (its IHDR chunk, which comes first)."""
    header = bytes(data[:24])
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", header[16:24])
    return int(width), int(height)


def write_png_atomically(path: str | os.PathLike[str], rgba: np.ndarray) -> Path:
    """Write a PNG under a temporary name in the same folder, then rename it into place."""
    return write_file_atomically(path, encode_png(rgba))


def write_file_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes (a PNG the server encoded and signed) under a temporary name in the same folder, then rename them."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    return path
