"""K frames of one new person for few-shot fine-tuning (DESIGN §4.4): a folder of images, a video or one image ->
aligned face crops with their 68 landmarks, framed as the server frames a live face (contract/landmarks.py).

    path -> PersonFrames(crops K×S×S×3 uint8, landmarks K×68×2 in crop units ([0, 1] over the crop))

A folder's images must share one size; a video gives K frames spread evenly over it; frames without a face are
skipped. Fewer than K faces, no face at all, unreadable files or mixed sizes raise PersonFramesError (one line).
numpy, Pillow, imageio-ffmpeg and mediapipe (imported when frames are read); no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from contract.landmarks import crop_box_from_landmarks, crop_square, landmarks_in_crop
from models.data.prepare import IMAGE_SUFFIXES, VIDEO_SUFFIXES, UnusableVideo, face_landmarks, image_frames, natural_key, open_video


class PersonFramesError(ValueError):
    """Frames that cannot make a personal model; the message is one line."""


class PersonFrames(NamedTuple):
    crops: np.ndarray  # K×S×S×3 uint8 RGB
    landmarks: np.ndarray  # K×68×2 float32, crop units
    sources: tuple[str, ...]  # where each crop came from (file name, or "frame N" of a video)


def _single_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise PersonFramesError(f"{path}: unreadable image ({error})") from None


def _candidates(path: Path, count: int) -> list[tuple[str, np.ndarray]]:
    """(label, H×W×3 uint8 frame) for every candidate frame: each image of a folder, one image, or a video's frames
    thinned to about 4 × count spread over it."""
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not names:
            raise PersonFramesError(f"{path}: no PNG or JPEG images in the folder")
        try:
            return list(zip(sorted(names, key=natural_key), image_frames(path)))
        except UnusableVideo as error:
            raise PersonFramesError(f"{path}: {error}") from None
    if not path.is_file():
        raise PersonFramesError(f"{path}: no such file or folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [(path.name, _single_image(path))]
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise PersonFramesError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}) or a folder")
    try:
        _, frames = open_video(path)
        decoded = list(frames)
    except UnusableVideo as error:
        raise PersonFramesError(f"{path}: {error}") from None
    if not decoded:
        raise PersonFramesError(f"{path}: no frames decoded")
    keep = np.unique(np.linspace(0, len(decoded) - 1, min(len(decoded), 4 * count)).round().astype(int))
    return [(f"frame {index}", decoded[index]) for index in keep]


def read_person_frames(path: str | Path, *, count: int, resolution: int) -> PersonFrames:
    """``count`` aligned crops (resolution²) of the face in ``path``, with their landmarks (module docstring)."""
    path = Path(path)
    if count < 1:
        raise PersonFramesError(f"K must be at least 1, got {count}")
    candidates = _candidates(path, count)
    import mediapipe  # lazy: the rest of the module runs without it

    found: list[tuple[str, np.ndarray, np.ndarray]] = []
    with mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        for label, frame in candidates:
            points = face_landmarks(mesh, frame)
            if points is not None:
                found.append((label, frame, points))
    if not found:
        raise PersonFramesError(f"{path}: no face found in {len(candidates)} frame(s)")
    if len(found) < count:
        raise PersonFramesError(f"{path}: faces in {len(found)} frame(s), fewer than K = {count}")
    chosen = [found[int(i)] for i in np.linspace(0, len(found) - 1, count).round().astype(int)]
    crops, landmarks = [], []
    for _, frame, points in chosen:
        box = crop_box_from_landmarks(points)
        crops.append(crop_square(frame, box, output_size=resolution))
        landmarks.append(landmarks_in_crop(points, box))
    return PersonFrames(
        crops=np.stack(crops), landmarks=np.stack(landmarks).astype(np.float32), sources=tuple(label for label, _, _ in chosen)
    )
