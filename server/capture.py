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

Small faces. The mesh's own detector (BlazeFace short range) sees the frame shrunk to 128×128, so a
face under about 70 px wide (ear to ear along the jaw) in a 640×480 frame goes unseen. When the mesh
finds no face, a second pass (``CropConfig.small_faces``) runs mediapipe's full-range face detector
(BlazeFace full range, 192×192, also in the wheel) over the whole frame, cuts a square twice the
detected box around each face, upscales it to 256×256 and runs the mesh on that cut (static mode):
its 478 points, mapped back to frame pixels, frame the box as for any face. A face the mesh does
find but narrower than ``small_face_px`` is read again the same way (near its limit the full-frame
mesh's points are several percent of the face off). While a face is small its next frame is first
looked for in a cut around its last landmarks, without the detector.
``bench/auto_crop_floor.py`` measures the smallest face each way finds.

No face. A frame where no face is found reuses the last good box and landmarks and says so
(``face_found=False``); before the first face there is nothing to reuse and ``NoFaceError`` is
raised.

This module imports numpy, Pillow and contract/ only; mediapipe is imported when a ``FaceCropper`` is made, so
the server starts without it and says how to install it when a session asks for ``crop: "auto"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
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
    # When the mesh finds no face: mediapipe's full-range detector on the whole frame, then the mesh on an upscaled
    # cut around each detection (finds faces about half as wide as the mesh alone; see the module's notes).
    small_faces: bool = True
    # With small_faces: a face the mesh does find but narrower than this (the 68 points' extent, px) is read again on
    # an upscaled cut: near its limit the full-frame mesh places points by several percent of the face off.
    small_face_px: float = 100.0

    def __post_init__(self) -> None:
        if not 16 <= self.output_size <= 4096:
            raise ValueError(f"output_size must be in [16, 4096], got {self.output_size}")
        if self.padding not in ("edge", "black"):
            raise ValueError(f"padding must be 'edge' or 'black', got {self.padding!r}")
        if self.max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {self.max_faces}")
        if not self.small_face_px >= 0:
            raise ValueError(f"small_face_px must be >= 0, got {self.small_face_px}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class CropResult:
    image: np.ndarray  # S×S×3 uint8 RGB, the aligned crop
    box: CropBox  # (centre_x, centre_y, side) in source pixels, after smoothing
    landmarks: np.ndarray  # 68×2 float32, iBUG order, x/y in [0, 1] over the crop
    face_found: bool  # False: no face in this frame; box and landmarks are the last good ones
    found_by: Literal["mesh", "small-face pass", "last box"] = "mesh"  # which pass found this frame's face


class _FaceMesh(Protocol):
    """The part of ``mediapipe.solutions.face_mesh.FaceMesh`` used here."""

    def process(self, image: np.ndarray) -> object: ...

    def close(self) -> None: ...


class _FaceDetector(Protocol):
    """The part of ``mediapipe.solutions.face_detection.FaceDetection`` used here."""

    def process(self, image: np.ndarray) -> object: ...

    def close(self) -> None: ...


# The small-face pass: the cut around a detected (or last) face is this many times the face's width, and is
# upscaled to this many pixels before the mesh reads it (the face then spans about half of the mesh's view).
SMALL_FACE_REGION = 2.0
SMALL_FACE_CUT_SIZE = 256


def _import_mediapipe() -> ModuleType:
    try:
        import mediapipe  # lazy: the server runs without it until a session asks for crop "auto"
    except ImportError as error:
        raise CaptureUnavailable(f"automatic face crops (crop 'auto') need mediapipe ({error}): pip install 'megalive[capture]'") from None
    return mediapipe


def _open_face_mesh(config: CropConfig, *, static_images: bool | None = None, max_faces: int | None = None) -> _FaceMesh:
    mediapipe = _import_mediapipe()
    return mediapipe.solutions.face_mesh.FaceMesh(
        # video mode (default): tracks from the last frame's face, detects on loss
        static_image_mode=config.static_images if static_images is None else static_images,
        max_num_faces=config.max_faces if max_faces is None else max_faces,
        refine_landmarks=config.refine_landmarks,
        min_detection_confidence=config.min_detection_confidence,
        min_tracking_confidence=config.min_tracking_confidence,
    )


def _open_full_range_detector(config: CropConfig) -> _FaceDetector:
    mediapipe = _import_mediapipe()
    # model_selection=1: BlazeFace full range (face_detection_full_range_sparse.tflite in the wheel), made for faces
    # up to about 5 m from the camera; the mesh's own detector is the short-range one.
    return mediapipe.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=config.min_detection_confidence)


class FaceCropper:
    """Crops successive frames of one video stream around its face: ``cropper(frame, t)``.

    One cropper per stream (it tracks the face and smooths the box over time); not thread-safe.
    Close it (or use it as a context manager) to free mediapipe's graphs.
    """

    def __init__(self, *, config: CropConfig) -> None:
        self.config = config
        self._mesh: _FaceMesh | None = _open_face_mesh(config)
        # The small-face pass's graphs are made the first time the mesh alone finds nothing (most streams never need them).
        self._detector: _FaceDetector | None = None
        self._cut_mesh: _FaceMesh | None = None
        self._box_filter = None if config.box_filter is None else OneEuroFilter(config=config.box_filter)
        self._last_box: CropBox | None = None  # the last good (smoothed) box
        self._last_landmarks: np.ndarray | None = None  # 68×2 over that box
        self._small_face: np.ndarray | None = None  # the last frame's face (68×2 source pixels) when the small-face pass found it

    def __call__(self, frame: np.ndarray, timestamp_s: float) -> CropResult:
        """The aligned crop of ``frame`` (H×W×3 uint8 RGB) taken at ``timestamp_s`` (seconds, any
        origin, increasing: it times the box smoothing)."""
        if self._mesh is None:
            raise RuntimeError("this FaceCropper is closed")
        frame = np.ascontiguousarray(check_frame(frame))  # mediapipe reads the raw buffer
        if not math.isfinite(timestamp_s):
            raise ValueError(f"timestamp must be finite, got {timestamp_s}")
        found_by: Literal["mesh", "small-face pass", "last box"] = "mesh"
        # A face the small-face pass found last frame is looked for around where it was first: the full-frame mesh
        # would miss it again, and the detector is not needed to know where to look.
        faces = [] if self._small_face is None else self._faces_in_cut(frame, _region_around_landmarks(self._small_face))
        if faces:
            found_by = "small-face pass"
        else:
            faces = self.faces(frame)
            if not faces and self.config.small_faces:
                faces = self.small_faces(frame)
                found_by = "small-face pass"
        if faces:
            landmarks_px = self._follow(faces)
            if found_by == "mesh" and self.config.small_faces and _extent(landmarks_px) < self.config.small_face_px:
                refined = self._faces_in_cut(frame, _region_around_landmarks(landmarks_px))
                if refined:
                    landmarks_px, found_by = refined[0], "small-face pass"
            # Followed in a cut while small; a face grown well past the mesh's reach goes back to the full-frame mesh.
            small = found_by == "small-face pass" and _extent(landmarks_px) < 2 * self.config.small_face_px
            self._small_face = landmarks_px if small else None
            box = crop_box_from_landmarks(landmarks_px)
            if self._box_filter is not None:
                smoothed = self._box_filter(np.array(box), timestamp_s)  # 3: cx, cy, side
                box = (float(smoothed[0]), float(smoothed[1]), float(smoothed[2]))
            self._last_box, self._last_landmarks = box, landmarks_in_crop(landmarks_px, box)
        elif self._last_box is None or self._last_landmarks is None:
            raise NoFaceError("no face found in the frame (and none before it to reuse)")
        else:
            found_by, self._small_face = "last box", None
        crop = crop_square(frame, self._last_box, output_size=self.config.output_size, padding=self.config.padding)
        return CropResult(image=crop, box=self._last_box, landmarks=self._last_landmarks.copy(), face_found=bool(faces), found_by=found_by)

    def faces(self, frame: np.ndarray) -> list[np.ndarray]:
        """The iBUG landmarks (68×2 source pixels) of every face the mesh finds in ``frame`` (H×W×3 uint8 RGB,
        C-contiguous), at most ``max_faces``. The mesh alone: ``small_faces`` is the second pass."""
        if self._mesh is None:
            raise RuntimeError("this FaceCropper is closed")
        height, width = frame.shape[:2]
        return _ibug_faces(self._mesh.process(frame), scale=(width, height), origin=(0.0, 0.0))

    def small_faces(self, frame: np.ndarray) -> list[np.ndarray]:
        """The small-face pass alone: the full-range detector over ``frame``, then the mesh on an upscaled cut around
        each detection (the most confident first, at most ``max_faces``); 68×2 source pixels each."""
        if self._mesh is None:
            raise RuntimeError("this FaceCropper is closed")
        if self._detector is None:
            self._detector = _open_full_range_detector(self.config)
        results = self._detector.process(frame)
        height, width = frame.shape[:2]
        detections = sorted(getattr(results, "detections", None) or (), key=lambda found: -float(found.score[0]))
        faces = []
        for detection in detections[: self.config.max_faces]:
            box = detection.location_data.relative_bounding_box  # x, y, w, h in [0, 1] of the frame
            side = SMALL_FACE_REGION * max(box.width * width, box.height * height)
            centre = ((box.xmin + box.width / 2) * width, (box.ymin + box.height / 2) * height)
            if side > 0:
                faces += self._faces_in_cut(frame, (centre[0], centre[1], side))
        return faces

    def _faces_in_cut(self, frame: np.ndarray, region: CropBox) -> list[np.ndarray]:
        """The mesh's face in the square ``region`` of ``frame`` cut and upscaled to SMALL_FACE_CUT_SIZE; frame pixels."""
        if self._cut_mesh is None:
            self._cut_mesh = _open_face_mesh(self.config, static_images=True, max_faces=1)  # every cut is a new picture
        cut = crop_square(frame, region, output_size=SMALL_FACE_CUT_SIZE, padding="edge")
        centre_x, centre_y, side = region
        return _ibug_faces(self._cut_mesh.process(cut), scale=(side, side), origin=(centre_x - side / 2, centre_y - side / 2))

    def _follow(self, faces: list[np.ndarray]) -> np.ndarray:
        """The face to crop: the one nearest the last box, else the largest (most spread out)."""
        if len(faces) == 1:
            return faces[0]
        if self._last_box is not None:
            last_centre = np.array(self._last_box[:2])
            return min(faces, key=lambda face: float(np.linalg.norm(face.mean(axis=0) - last_centre)))
        return max(faces, key=lambda face: float(face.std(axis=0).sum()))

    def close(self) -> None:
        """Frees mediapipe's graphs; the cropper refuses frames afterwards. Closing twice is fine."""
        for graph in (self._mesh, self._cut_mesh, self._detector):
            if graph is not None:
                graph.close()
        self._mesh = self._cut_mesh = self._detector = None

    def __enter__(self) -> FaceCropper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _ibug_faces(results: object, *, scale: tuple[float, float], origin: tuple[float, float]) -> list[np.ndarray]:
    """A mesh's results -> 68×2 iBUG points per face, at ``origin + normalised · scale`` (source pixels)."""
    faces = []
    for face in getattr(results, "multi_face_landmarks", None) or ():
        normalised = np.array([(point.x, point.y) for point in face.landmark])  # 478×2 in [0,1]
        faces.append(ibug68_from_mediapipe(normalised * scale + origin))
    return faces


def _extent(landmarks: np.ndarray) -> float:
    """A face's size in pixels: the larger side of its 68 points' bounding box (about its jaw's width)."""
    return float(np.ptp(landmarks, axis=0).max())


def _region_around_landmarks(landmarks: np.ndarray) -> CropBox:
    """The small-face pass's cut around a face's 68 points: centred on them, SMALL_FACE_REGION times their extent."""
    centre = landmarks.mean(axis=0)
    return (float(centre[0]), float(centre[1]), SMALL_FACE_REGION * _extent(landmarks))
