"""Enrollment on the server, one-shot and torch-free (DESIGN §3 `enroll`, §4.3): portraits -> an avatar at once.

    portraits (decoded H×W×3 uint8 pictures of one person)
    -> in each, the largest face (mediapipe's face mesh on still images; several faces: the largest, and a note says so)
    -> its aligned crop at the model's resolution (contract/landmarks.py: the framing every image driver gets)
    -> the identity embedder's graph on the K crops (Engine.embed) -> identity tensor C_id×S×S
    -> the avatar bank, with the consent record (the statement, word for word, with its time and digest) and the
       provenance (one-shot by the embedder, K frames, their digest, the model) (Engine.enroll: written, then renamed)
The first crop, shrunk, is the thumbnail. Refused in one line, the bank untouched: no consent statement, a name in
use or malformed, no face in a portrait, more portraits than allowed, a model that cannot enroll.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from contract.avatar_bank import AvatarBankError, AvatarRecord, ConsentRecord, check_name
from contract.landmarks import crop_box_from_landmarks, crop_square, landmarks_in_crop
from server.capture import CropConfig, FaceCropper
from server.engine import Engine

MAX_FACES_LOOKED_FOR = 4  # in a portrait: enough to find the largest among a few people


class EnrollmentError(ValueError):
    """A portrait set that cannot become an avatar; the message is one line for the user."""


@dataclass(frozen=True)
class EnrollmentReport:
    avatar: int  # its id
    name: str
    frames: int  # K: the portraits the identity was embedded from
    notes: tuple[str, ...]  # what the user should know (several faces in a portrait, ...)
    seconds: float  # face search, crops and embedding, bank written
    crops: np.ndarray  # K×H×W×3 uint8: the aligned faces it was embedded from (what refinement fits to)
    landmarks: np.ndarray  # K×68×2 float32: their landmarks in crop pixels
    identity: np.ndarray  # C_id×S×S float32: the one-shot tensor


def largest_face(faces: Sequence[np.ndarray]) -> np.ndarray:
    """The face whose 68 landmarks (pixels) span the largest box."""
    return max(faces, key=lambda face: float(np.prod(face.max(axis=0) - face.min(axis=0))))


def square_windows(height: int, width: int, side: int) -> list[tuple[int, int]]:
    """Top-left corners of side×side windows covering an image, overlapping by half."""
    step = max(1, side // 2)
    rows = sorted({*range(0, max(height - side, 0) + 1, step), max(height - side, 0)})
    columns = sorted({*range(0, max(width - side, 0) + 1, step), max(width - side, 0)})
    return [(top, left) for top in rows for left in columns]


def find_faces(finder: FaceCropper, picture: np.ndarray) -> list[np.ndarray]:
    """Every face's 68 landmarks (picture pixels) in a photograph. The face mesh's detector sees the picture shrunk to
    a small square, so a face in a wide picture, or a small one, goes unseen: the picture is searched whole, then in
    square windows the size of its short side, then (when still nothing) of half that; a face found twice is kept once."""
    height, width = picture.shape[:2]
    found = list(finder.faces(np.ascontiguousarray(picture)))
    for side in (min(height, width), min(height, width) // 2):
        if side < 64 or (found and side < min(height, width)):
            break
        for top, left in square_windows(height, width, side):
            window = np.ascontiguousarray(picture[top : top + side, left : left + side])
            for face in finder.faces(window):
                face = face + np.array([left, top], dtype=face.dtype)
                extent = float(np.ptp(face, axis=0).max())
                if all(np.linalg.norm(face.mean(axis=0) - other.mean(axis=0)) > 0.5 * extent for other in found):
                    found.append(face)
    return found


def portrait_crops(portraits: Sequence[np.ndarray], *, size: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """K pictures -> K×size×size×3 uint8 aligned face crops (the largest face of each), their landmarks (K×68×2 float32
    crop pixels), and the notes."""
    notes: list[str] = []
    crops, landmarks = [], []
    with FaceCropper(config=CropConfig(output_size=size, box_filter=None, max_faces=MAX_FACES_LOOKED_FOR, static_images=True)) as finder:
        for index, portrait in enumerate(portraits, start=1):
            faces = find_faces(finder, portrait)
            if not faces:
                raise EnrollmentError(f"no face found in portrait {index} of {len(portraits)}: use a picture where the face is clear")
            if len(faces) > 1:
                notes.append(f"portrait {index}: {len(faces)} faces; took the largest")
            face = largest_face(faces)
            box = crop_box_from_landmarks(face)
            crops.append(crop_square(portrait, box, output_size=size))
            landmarks.append(landmarks_in_crop(face, box) * np.float32(size))  # [0, 1] of the crop -> crop pixels
    return np.stack(crops), np.stack(landmarks), tuple(notes)


def enroll_portraits(
    engine: Engine, portraits: Sequence[np.ndarray], *, name: str, consent: str, max_portraits: int, made_by: str
) -> EnrollmentReport:
    """Make and store the avatar (see the module docstring); ``made_by`` names the server in its provenance."""
    began = time.perf_counter()
    if not engine.can_enroll:
        raise EnrollmentError(
            f"{engine.card.name} cannot enroll avatars: it needs a contract-v2 model (identity embedder) and a bank file (--bank)"
        )
    if not 1 <= len(portraits) <= max_portraits:
        raise EnrollmentError(f"enroll takes 1 to {max_portraits} portraits, got {len(portraits)}")
    try:
        check_name(name, taken=engine.avatar_names)
        record_consent = ConsentRecord.of(name=name, statement=consent, recorded_at=datetime.now(UTC).isoformat(timespec="seconds"))
    except AvatarBankError as error:
        raise EnrollmentError(str(error)) from None
    crops, landmarks, notes = portrait_crops(portraits, size=engine.resolution[0])
    how = "enrolled one-shot: the identity embedder on the portraits' face crops"
    if engine.teacher:
        how = "enrolled one-shot: the teacher's source half (E_app, E_mtn, W_s→c, G3D) on the first portrait's face crop"
        if len(crops) > 1:
            notes += (f"the teacher is one-shot: it encoded portrait 1 and left the other {len(crops) - 1}",)
        crops, landmarks = crops[:1], landmarks[:1]
    frames = crops.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)  # K×H×W×3 -> K×3×H×W in [0, 1]
    identity = engine.embed(frames)
    height, width = engine.thumbnail_size
    thumbnail = np.asarray(Image.fromarray(crops[0]).resize((width, height), Image.BILINEAR))
    record = AvatarRecord(
        name=name,
        consent=record_consent,
        provenance={
            "how": how,
            "frames": len(crops),
            "frames_sha256": hashlib.sha256(crops.tobytes()).hexdigest(),
            "model": engine.card.name,
            "model_command": engine.card.command,
            "made_by": made_by,
        },
    )
    try:
        avatar = engine.enroll(identity=identity, thumbnail=thumbnail, record=record)
    except AvatarBankError as error:
        raise EnrollmentError(str(error)) from None
    return EnrollmentReport(
        avatar=avatar,
        name=name,
        frames=len(crops),
        notes=notes,
        seconds=time.perf_counter() - began,
        crops=crops,
        landmarks=landmarks,
        identity=identity,
    )
