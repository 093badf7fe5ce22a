"""Pixel conversions between the wire and the engine: decode, resize, CHW floats, texture encoding.

Pillow does the codecs and resampling (C code, no torch); numpy does the layout changes.
"""

from __future__ import annotations

import io
import warnings
from types import ModuleType

import numpy as np
from PIL import Image

from client.protocol import Buffer, EncodedBuffer, ProtocolError, raw_buffer_from_array

# The one Pillow format each wire codec may be: a BMP, TIFF, GIF, WEBP... sent as "png" is refused, not decoded.
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


def decode_driver_image(buffer: Buffer, *, max_pixels: int, request_id: int | None = None) -> np.ndarray:
    """A driver frame from the wire as H×W×3 uint8 (RGB). Accepts u8 RGB/RGBA/grey, f32 in [0,1], jpeg, png.

    An encoded image's size is read from its header before anything is decoded: above ``max_pixels``
    it is refused (``too_large``), so a small file that declares a huge image costs nothing. Any
    failure to decode is this frame's ``bad_request``, whatever the decoder raised."""
    if isinstance(buffer, EncodedBuffer):
        try:
            with warnings.catch_warnings():
                # Pillow warns about large declared sizes as it opens; the pixel limit below decides instead.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(buffer.data), formats=[_PIL_FORMATS[buffer.codec]])
            with image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ProtocolError(
                        "too_large",
                        f"{buffer.codec} image of {width}×{height} exceeds this server's {max_pixels} pixels",
                        request_id=request_id,
                    )
                return np.asarray(image.convert("RGB"))
        except ProtocolError:
            raise
        except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, ... on broken files
            raise ProtocolError(
                "bad_request", f"cannot decode {buffer.codec} driver image: {type(error).__name__}: {error}", request_id=request_id
            ) from None
    array = buffer.array()
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ProtocolError("bad_request", f"driver image must be H×W×{{1,3,4}}, got shape {list(buffer.shape)}", request_id=request_id)
    if array.shape[0] * array.shape[1] > max_pixels:
        raise ProtocolError(
            "too_large",
            f"driver image of {array.shape[1]}×{array.shape[0]} exceeds this server's {max_pixels} pixels",
            request_id=request_id,
        )
    if array.dtype == np.float32:
        if not np.isfinite(array).all():
            raise ProtocolError("bad_request", "driver image holds NaN or infinite values", request_id=request_id)
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array[:, :, :3]


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an H×W×C uint8 image to size (h, w); a no-op when it already fits."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    mode = "RGBA" if image.shape[2] == 4 else "RGB"
    return np.asarray(Image.fromarray(np.ascontiguousarray(image), mode).resize((width, height), Image.BILINEAR))


def fill_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An H×W×C uint8 driver frame at size (h, w) without stretching: the largest centred part of the frame with that
    aspect, resized bilinearly (a 16:9 frame into a square model loses its sides). A crop "none" session's frame is
    meant to be the face crop already; one of another aspect is cut, never stretched, which would squash the face."""
    height, width = size
    frame_height, frame_width = image.shape[:2]
    if frame_width * height > width * frame_height:  # wider than the target: keep the middle columns
        keep = max(1, round(frame_height * width / height))
        left = (frame_width - keep) // 2
        image = image[:, left : left + keep]
    elif frame_width * height < width * frame_height:  # taller: keep the middle rows
        keep = max(1, round(frame_width * height / width))
        top = (frame_height - keep) // 2
        image = image[top : top + keep]
    return resize_rgb(image, size)


def to_engine_batch(images: list[np.ndarray]) -> np.ndarray:
    """B images H×W×3 uint8 -> B×3×H×W float32 in [0,1]."""
    batch = np.stack(images)  # B×H×W×3
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) * np.float32(1.0 / 255.0)


def to_texture_pixels(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Engine outputs (B×3×H×W rgb, B×1×H×W alpha, floats in [0,1]) -> B×H×W×4 uint8 RGBA: each value times 255
    (in double precision, where the product of a float32 is exact), rounded to the nearest integer and clipped to
    [0, 255] (the one exact half, 0.5 -> 127.5, goes to 128). OpenCV does it in one pass where it is
    installed (the capture and provenance extras bring it; a 512 px texture in a quarter of numpy's time), numpy
    otherwise: the same bytes either way (tests/server/test_imaging.py)."""
    cv2 = _opencv()
    return _texture_pixels_numpy(rgb, alpha) if cv2 is None else _texture_pixels_opencv(cv2, rgb, alpha)


def _opencv() -> ModuleType | None:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _texture_pixels_opencv(cv2: ModuleType, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    batch, _, height, width = rgb.shape
    out = np.empty((batch, height, width, 4), np.uint8)
    for index in range(batch):
        planes = [np.ascontiguousarray(plane) for plane in (rgb[index, 0], rgb[index, 1], rgb[index, 2], alpha[index, 0])]
        interleaved = cv2.merge(planes)  # 4 planes H×W -> H×W×4 float32
        # OpenCV multiplies in double, then its saturating cast rounds to nearest and clips to [0, 255].
        out[index] = cv2.multiply(interleaved, (255.0, 255.0, 255.0, 255.0), dtype=cv2.CV_8U)
    return out


def _texture_pixels_numpy(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    batch, _, height, width = rgb.shape
    rgba = np.empty((batch, height, width, 4), np.float64)
    rgba[..., :3] = rgb.transpose(0, 2, 3, 1)  # B×3×H×W -> B×H×W×3
    rgba[..., 3] = alpha[:, 0]
    rgba *= 255.0
    np.rint(rgba, out=rgba)
    np.clip(rgba, 0.0, 255.0, out=rgba)
    return rgba.astype(np.uint8)


def encode_texture(rgba: np.ndarray, *, output_format: str, size: tuple[int, int], jpeg_quality: int = 90) -> Buffer:
    """H×W×4 uint8 -> the session's wire format at its output size."""
    rgba = resize_rgb(rgba, size)
    if output_format == "rgba8":
        return raw_buffer_from_array(rgba)
    if output_format == "rgb8":
        return raw_buffer_from_array(np.ascontiguousarray(rgba[:, :, :3]))
    if output_format == "png":  # lossless, with alpha; the server signs it with a C2PA manifest when it has a key
        encoded = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(encoded, format="PNG", compress_level=1)
        return EncodedBuffer(codec="png", data=memoryview(encoded.getvalue()))
    if output_format == "jpeg":
        encoded = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgba[:, :, :3]), "RGB").save(encoded, format="JPEG", quality=jpeg_quality)
        return EncodedBuffer(codec="jpeg", data=memoryview(encoded.getvalue()))
    raise ValueError(f"unknown output format {output_format!r}")


def decode_texture(buffer: Buffer) -> np.ndarray:
    """A texture reply's pixels as H×W×C uint8 (C=4 for rgba8 and png, 3 for rgb8 and jpeg)."""
    if isinstance(buffer, EncodedBuffer):
        with Image.open(io.BytesIO(buffer.data)) as image:
            return np.asarray(image.convert("RGBA" if buffer.codec == "png" else "RGB"))
    return buffer.array()
