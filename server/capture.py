"""Server-side face crop for image drivers (``crop: "auto"``): full webcam frames in, the aligned
square crop the avatar model expects out.

Framing. The models were trained on SyntheticHeads renders (DESIGN §5): a neutral, frontal head
centred in the square with its 68 landmarks near the canonical ones (contract/landmarks.py). A real face is framed the
same way: mediapipe's face mesh (legacy ``mp.solutions.face_mesh``, whose model files ship inside
the mediapipe 0.10.21 wheel, so nothing downloads) gives 478 points, ``MEDIAPIPE_TO_IBUG68`` picks
the 68 iBUG ones, and the least-squares similarity without rotation (one scale, one translation)
that carries them onto the canonical ones defines the box (centre x, centre y, side) in source
pixels. No rotation on purpose: the model learned head roll from the driver, so the crop must not
undo it. The box is sampled with Pillow's bilinear filter (antialiased when shrinking); the parts
of the box outside the frame are filled by edge replication (see ``CropConfig.padding``).

Smoothing. Landmarks jitter by a pixel or so from frame to frame, and a crop box that jitters
shakes the whole avatar. The box (cx, cy, side) goes through a One-Euro filter (server/one_euro.py):
steady when the performer holds still, little lag when they move. The landmarks returned with a
crop are the frame's own (unsmoothed) landmarks in the smoothed crop's coordinates.

No face. A frame where the mesh finds no face reuses the last good box and landmarks and says so
(``face_found=False``); before the first face there is nothing to reuse and ``NoFaceError`` is
raised.

This module imports numpy, Pillow and contract/ only; mediapipe is imported when a ``FaceCropper`` is made, so
the server starts without it and says how to install it when a session asks for ``crop: "auto"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

# The 68-point tables and the box fit are contract's: training data preparation frames faces with the same ones.
from contract.landmarks import CropBox, check_frame, crop_box_from_landmarks, crop_square, ibug68_from_mediapipe, landmarks_in_crop
from server.one_euro import OneEuroConfig, OneEuroFilter


class CaptureUnavailable(RuntimeError):
    """Automatic face crops were asked for, but mediapipe is not installed."""


class NoFaceError(ValueError):
    """No face has been found yet in this cropper's life, so there is no box to reuse."""


@dataclass(frozen=True, kw_only=True)
class CropConfig:
    output_size: int  # S: side of the square crop in pixels (the model's input resolution)
    # Smoothing of the box (cx, cy, side), all in source pixels (beta acts on pixels per second).
    # None: no smoothing, every frame gets its own fitted box.
    box_filter: OneEuroConfig | None = OneEuroConfig()
    # What fills the parts of the box outside the frame. "edge" (default) replicates the border
    # pixels: the model only ever saw full-bleed backgrounds, and a smeared background is closer to
    # that than a hard black bar, an edge it never met in training. "black": zeros.
    padding: Literal["edge", "black"] = "edge"
    max_faces: int = 1  # faces the mesh looks for; the one nearest the last box is followed
    refine_landmarks: bool = True  # mediapipe's attention mesh: finer eye and lip contours
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    static_images: bool = False  # True: every frame is a separate photograph (detect each time, no tracking)

    def __post_init__(self) -> None:
        if not 16 <= self.output_size <= 4096:
            raise ValueError(f"output_size must be in [16, 4096], got {self.output_size}")
        if self.padding not in ("edge", "black"):
            raise ValueError(f"padding must be 'edge' or 'black', got {self.padding!r}")
        if self.max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {self.max_faces}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class CropResult:
    image: np.ndarray  # S×S×3 uint8 RGB, the aligned crop
    box: CropBox  # (centre_x, centre_y, side) in source pixels, after smoothing
    landmarks: np.ndarray  # 68×2 float32, iBUG order, x/y in [0, 1] over the crop
    face_found: bool  # False: no face in this frame; box and landmarks are the last good ones


class _FaceMesh(Protocol):
    """The part of ``mediapipe.solutions.face_mesh.FaceMesh`` used here."""

    def process(self, image: np.ndarray) -> object: ...

    def close(self) -> None: ...


def _open_face_mesh(config: CropConfig) -> _FaceMesh:
    try:
        import mediapipe  # lazy: the server runs without it until a session asks for crop "auto"
    except ImportError as error:
        raise CaptureUnavailable(f"automatic face crops (crop 'auto') need mediapipe ({error}): pip install 'megalive[capture]'") from None
    return mediapipe.solutions.face_mesh.FaceMesh(
        static_image_mode=config.static_images,  # video mode (default): tracks from the last frame's face, detects on loss
        max_num_faces=config.max_faces,
        refine_landmarks=config.refine_landmarks,
        min_detection_confidence=config.min_detection_confidence,
        min_tracking_confidence=config.min_tracking_confidence,
    )


class FaceCropper:
    """Crops successive frames of one video stream around its face: ``cropper(frame, t)``.

    One cropper per stream (it tracks the face and smooths the box over time); not thread-safe.
    Close it (or use it as a context manager) to free mediapipe's graph.
    """

    def __init__(self, *, config: CropConfig) -> None:
        self.config = config
        self._mesh: _FaceMesh | None = _open_face_mesh(config)
        self._box_filter = None if config.box_filter is None else OneEuroFilter(config=config.box_filter)
        self._last_box: CropBox | None = None  # the last good (smoothed) box
        self._last_landmarks: np.ndarray | None = None  # 68×2 over that box

    def __call__(self, frame: np.ndarray, timestamp_s: float) -> CropResult:
        """The aligned crop of ``frame`` (H×W×3 uint8 RGB) taken at ``timestamp_s`` (seconds, any
        origin, increasing: it times the box smoothing)."""
        if self._mesh is None:
            raise RuntimeError("this FaceCropper is closed")
        frame = np.ascontiguousarray(check_frame(frame))  # mediapipe reads the raw buffer
        if not math.isfinite(timestamp_s):
            raise ValueError(f"timestamp must be finite, got {timestamp_s}")
        faces = self.faces(frame)
        if faces:
            landmarks_px = self._follow(faces)
            box = crop_box_from_landmarks(landmarks_px)
            if self._box_filter is not None:
                smoothed = self._box_filter(np.array(box), timestamp_s)  # 3: cx, cy, side
                box = (float(smoothed[0]), float(smoothed[1]), float(smoothed[2]))
            self._last_box, self._last_landmarks = box, landmarks_in_crop(landmarks_px, box)
        elif self._last_box is None or self._last_landmarks is None:
            raise NoFaceError("no face found in the frame (and none before it to reuse)")
        crop = crop_square(frame, self._last_box, output_size=self.config.output_size, padding=self.config.padding)
        return CropResult(image=crop, box=self._last_box, landmarks=self._last_landmarks.copy(), face_found=bool(faces))

    def faces(self, frame: np.ndarray) -> list[np.ndarray]:
        """The iBUG landmarks (68×2 source pixels) of every face the mesh finds in ``frame`` (H×W×3 uint8 RGB,
        C-contiguous), at most ``max_faces``."""
        if self._mesh is None:
            raise RuntimeError("this FaceCropper is closed")
        results = self._mesh.process(frame)
        height, width = frame.shape[:2]
        faces = []
        for face in getattr(results, "multi_face_landmarks", None) or ():
            normalised = np.array([(point.x, point.y) for point in face.landmark])  # 478×2 in [0,1]
            faces.append(ibug68_from_mediapipe(normalised * (width, height)))
        return faces

    def _follow(self, faces: list[np.ndarray]) -> np.ndarray:
        """The face to crop: the one nearest the last box, else the largest (most spread out)."""
        if len(faces) == 1:
            return faces[0]
        if self._last_box is not None:
            last_centre = np.array(self._last_box[:2])
            return min(faces, key=lambda face: float(np.linalg.norm(face.mean(axis=0) - last_centre)))
        return max(faces, key=lambda face: float(face.std(axis=0).sum()))

    def close(self) -> None:
        """Frees mediapipe's graph; the cropper refuses frames afterwards. Closing twice is fine."""
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> FaceCropper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
