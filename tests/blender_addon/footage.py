"""Test footage with a real face: scikit-image's astronaut placed small and off centre in a wide (or upright) frame,
written as an H.264 movie, optionally stored turned with rotation metadata as phones do. Shared by the Blender and
Unreal footage tests."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

GREY = (120, 120, 120)


@functools.cache
def astronaut_and_landmarks() -> tuple[np.ndarray, np.ndarray]:
    """The 512² astronaut (H×W×3 uint8) and its 68 iBUG landmarks (photo pixels), from the face mesh."""
    from skimage import data

    from server.capture import CropConfig, FaceCropper

    photo = np.ascontiguousarray(data.astronaut())
    with FaceCropper(config=CropConfig(output_size=64, box_filter=None, static_images=True, small_faces=False)) as finder:
        (landmarks,) = finder.faces(photo)
    return photo, landmarks


def face_frame(*, size: tuple[int, int], face_width: float, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A grey frame of ``size`` (width, height) with the astronaut's face ``face_width`` px wide (jaw end to jaw end)
    centred at ``centre``; returns the frame and where the face's 68 landmarks are in it."""
    photo, landmarks = astronaut_and_landmarks()
    scale = face_width / float(np.linalg.norm(landmarks[16] - landmarks[0]))
    offset = np.asarray(centre) - landmarks.mean(axis=0) * scale  # frame = scale·photo + offset
    inverse = (1 / scale, 0.0, -offset[0] / scale, 0.0, 1 / scale, -offset[1] / scale)  # frame -> photo
    frame = Image.fromarray(photo).transform(size, Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR, fillcolor=GREY)
    return np.ascontiguousarray(np.asarray(frame)), landmarks * scale + offset


def grey_frame(size: tuple[int, int]) -> np.ndarray:
    return np.full((size[1], size[0], 3), GREY, dtype=np.uint8)


def write_movie(path: Path, frames: list[np.ndarray], *, fps: int = 10, display_rotation: int = 0) -> Path:
    """An H.264 MP4 of ``frames`` (H×W×3 uint8, all one size, even sides). ``display_rotation`` 90: the frames are
    stored turned a quarter clockwise with a display matrix saying to turn them back (a phone held upright), so a
    player, Blender and ffmpeg show them as given."""
    import imageio_ffmpeg

    stored = [np.ascontiguousarray(np.rot90(frame, -1)) for frame in frames] if display_rotation == 90 else frames
    if display_rotation not in (0, 90):
        raise ValueError("display_rotation must be 0 or 90")
    height, width = stored[0].shape[:2]
    plain = path.with_name(path.stem + "-stored.mp4") if display_rotation else path
    writer = imageio_ffmpeg.write_frames(
        str(plain), (width, height), fps=fps, quality=10, macro_block_size=2, pix_fmt_out="yuv420p", ffmpeg_log_level="error"
    )
    writer.send(None)
    for frame in stored:
        writer.send(frame.tobytes())
    writer.close()
    if display_rotation:
        subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", str(display_rotation)]
            + ["-i", str(plain), "-c", "copy", str(path)],
            check=True,
        )
        plain.unlink()
    return path
