"""Portraits from files for `megalive enroll`: pictures (PNG, JPEG, anything Pillow opens) or one video (frames taken
evenly through it by the ffmpeg imageio-ffmpeg bundles), as H×W×3 uint8 RGB arrays no larger than MAX_SIDE a side.

A picture's size is read from its header before it is decoded: one above MAX_SOURCE_PIXELS is refused in one line
(a 20000×20000 file costs nothing), and every other is shrunk (antialiased) so the request stays small; the server
finds the face and crops it at the model's resolution, far below this size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 1600  # px: a sent portrait's longest side (a face in it is still several times the model's 256)
MAX_SOURCE_PIXELS = 100_000_000  # a picture file's declared size above which it is refused unread
MAX_PORTRAITS = 8
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


class PortraitError(ValueError):
    """Inputs that cannot be sent as portraits; the message is one line for the user."""


def _shrunk(image: Image.Image) -> np.ndarray:
    """RGB, its longest side at most MAX_SIDE (antialiased; never enlarged)."""
    image = image.convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)  # only ever shrinks
    return np.asarray(image)


def shrunk_portrait(picture: np.ndarray) -> np.ndarray:
    """An H×W×3 uint8 portrait with its longest side at most MAX_SIDE (the server's, for what a host sent unchanged)."""
    return picture if max(picture.shape[:2]) <= MAX_SIDE else _shrunk(Image.fromarray(picture))


def read_picture(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel limit below decides
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_SOURCE_PIXELS:
                    raise PortraitError(f"{path}: {width}×{height} is too large a picture (at most {MAX_SOURCE_PIXELS:,} pixels)")
                return _shrunk(image)
    except PortraitError:
        raise
    except FileNotFoundError:
        raise PortraitError(f"{path}: no such file") from None
    except Image.DecompressionBombError:  # Pillow's own refusal, before ours, of a size far past its limit
        raise PortraitError(f"{path}: too large a picture (at most {MAX_SOURCE_PIXELS:,} pixels)") from None
    except (OSError, ValueError) as error:
        raise PortraitError(f"{path}: not a picture Pillow can read ({type(error).__name__}: {error})") from None


def read_video_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly through the video (its first and last included)."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
    except (OSError, RuntimeError, StopIteration, ValueError) as error:
        raise PortraitError(
            f"{path}: not a video ffmpeg can read ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None
    if not frames:
        raise PortraitError(f"{path}: the video has no frames")
    picks = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    return [_shrunk(Image.fromarray(frames[index])) for index in picks]


def read_portraits(paths: list[Path], *, video_frames: int) -> list[np.ndarray]:
    """Pictures, or one video -> up to MAX_PORTRAITS arrays; PortraitError (one line) for anything else."""
    if not 1 <= video_frames <= MAX_PORTRAITS:
        raise PortraitError(f"--frames must be between 1 and {MAX_PORTRAITS}, got {video_frames}")
    videos = [path for path in paths if path.suffix.lower() in VIDEO_SUFFIXES]
    if videos:
        if len(paths) != 1:
            raise PortraitError("give one video, or pictures, not both or several videos")
        return read_video_frames(videos[0], video_frames)
    if len(paths) > MAX_PORTRAITS:
        raise PortraitError(f"at most {MAX_PORTRAITS} portraits, got {len(paths)}")
    return [read_picture(path) for path in paths]
