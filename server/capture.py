"""Server-side face crop for image drivers (``crop: "auto"``): full webcam frames in, the aligned
square crop the avatar model expects out.

Framing. The models were trained on SyntheticHeads renders (DESIGN §5): a neutral, frontal head
centred in the square with its 68 landmarks near ``CANONICAL_IBUG68``. A real face is framed the
same way: mediapipe's face mesh (legacy ``mp.solutions.face_mesh``, whose model files ship inside
the mediapipe 0.10.21 wheel, so nothing downloads) gives 478 points, ``MEDIAPIPE_TO_IBUG68`` picks
the 68 iBUG ones, and the least-squares similarity without rotation (one scale, one translation)
that carries them onto ``CANONICAL_IBUG68`` defines the box (centre x, centre y, side) in source
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

This module imports numpy and Pillow only; mediapipe is imported when a ``FaceCropper`` is made, so
the server starts without it and says how to install it when a session asks for ``crop: "auto"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from server.one_euro import OneEuroConfig, OneEuroFilter

# Indices into mediapipe's face mesh (478 points with iris; the first 468 without) for the 68 iBUG
# points, in iBUG order. "Left"/"right" below are image left/right of an unmirrored frame.
# The jaw points are the face-oval vertices nearest to 8 equal arc-length steps from the oval vertex
# level with the outer eye corners (127) down to the chin (152), mirrored for the other side
# (measured on skimage's astronaut); the rest are the mesh vertices on the named feature.
MEDIAPIPE_TO_IBUG68: tuple[int, ...] = (
    # jaw 0-16: image left -> chin 8 -> image right
    127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,
    # brows 17-21 (image left, outer -> inner), 22-26 (inner -> outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30 (30 = tip), nostril base 31-35 (image left -> right)
    168, 197, 5, 1, 75, 97, 2, 326, 305,
    # eyes: 36 outer, 37-38 upper lid, 39 inner, 40-41 lower lid; 42 inner .. 45 outer .. 47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # mouth: outer 48 (left corner) .. 54 (right corner) along the top, back along the bottom;
    # inner 60 .. 64 along the top, back along the bottom
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    78, 82, 13, 312, 308, 317, 14, 87,
)  # fmt: skip
MEDIAPIPE_POINT_COUNTS = (468, 478)  # without / with the refined iris points

# Where the 68 landmarks of a neutral, frontal, centred SyntheticHeads head fall over the square
# crop: x right, y down, in [0, 1] (pixel i covers [i, i+1) / resolution). Made offline by
#     heads = SyntheticHeads(resolution=256)
#     ids = sample_identities(2048, generator=torch.Generator().manual_seed(0))
#     (heads.landmarks(ids, neutral_motion(2048)) / 256).mean(0), rounded to 4 decimals
# (resolution-free: landmarks scale with it). tests/server/test_capture.py recomputes it.
CANONICAL_IBUG68: np.ndarray = np.array(
    [
        # jaw 0-16: image left -> chin 8 -> image right
        [0.2401, 0.4691], [0.2415, 0.5404], [0.2568, 0.6090], [0.2840, 0.6721], [0.3189, 0.7275],
        [0.3574, 0.7730], [0.3951, 0.8068], [0.4264, 0.8276], [0.5000, 0.8346], [0.5736, 0.8276],
        [0.6049, 0.8068], [0.6426, 0.7730], [0.6811, 0.7275], [0.7160, 0.6721], [0.7432, 0.6090],
        [0.7585, 0.5404], [0.7599, 0.4691],
        # brows 17-26
        [0.3180, 0.3964], [0.3520, 0.3909], [0.3861, 0.3891], [0.4201, 0.3909], [0.4542, 0.3964],
        [0.5458, 0.3964], [0.5799, 0.3909], [0.6139, 0.3891], [0.6480, 0.3909], [0.6820, 0.3964],
        # nose bridge 27-30, nostril base 31-35
        [0.5000, 0.4589], [0.5000, 0.4940], [0.5000, 0.5291], [0.5000, 0.5643], [0.4693, 0.5796],
        [0.4846, 0.5830], [0.5000, 0.5864], [0.5154, 0.5830], [0.5307, 0.5796],
        # eyes 36-41 (image left), 42-47
        [0.3326, 0.4564], [0.3705, 0.4295], [0.4084, 0.4264], [0.4464, 0.4614], [0.4084, 0.4767],
        [0.3705, 0.4751], [0.5536, 0.4614], [0.5916, 0.4264], [0.6295, 0.4295], [0.6674, 0.4564],
        [0.6295, 0.4751], [0.5916, 0.4767],
        # mouth: outer 48-59, inner 60-67
        [0.4306, 0.6564], [0.4537, 0.6433], [0.4769, 0.6411], [0.5000, 0.6460], [0.5231, 0.6411],
        [0.5463, 0.6433], [0.5694, 0.6564], [0.5463, 0.6731], [0.5231, 0.6760], [0.5000, 0.6768],
        [0.4769, 0.6760], [0.4537, 0.6731], [0.4341, 0.6564], [0.4653, 0.6564], [0.5000, 0.6564],
        [0.5347, 0.6564], [0.5659, 0.6564], [0.5347, 0.6564], [0.5000, 0.6564], [0.4653, 0.6564],
    ],
    dtype=np.float32,
)  # fmt: skip
CANONICAL_IBUG68.flags.writeable = False  # a shared constant: nobody edits it by accident

CropBox = tuple[float, float, float]  # (centre_x, centre_y, side) in source pixels


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


def ibug68_from_mediapipe(points: np.ndarray) -> np.ndarray:
    """The 68 iBUG landmarks (68×2 float32, x and y only) from mediapipe's 478×2 or 478×3 face-mesh
    points (468 rows, the mesh without iris refinement, are accepted too). Units are kept."""
    points = np.asarray(points)
    if (
        points.ndim != 2
        or points.shape[0] not in MEDIAPIPE_POINT_COUNTS
        or points.shape[1] not in (2, 3)
        or not np.issubdtype(points.dtype, np.number)
    ):
        raise ValueError(
            f"face-mesh points must be a numeric 478×2 or 478×3 array (468 rows without iris), "
            f"got {points.dtype} {points.shape}"
        )
    return points[list(MEDIAPIPE_TO_IBUG68), :2].astype(np.float32)  # 478×{2,3} -> 68×2


def _check_landmarks68(landmarks: np.ndarray) -> np.ndarray:
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"iBUG landmarks must be 68×2, got shape {landmarks.shape}")
    if not np.isfinite(landmarks).all():
        raise ValueError("landmarks hold NaN or infinite values")
    return landmarks


def crop_box_from_landmarks(landmarks: np.ndarray) -> CropBox:
    """The square box (centre_x, centre_y, side) in source pixels that frames a face the way the
    model was trained: the least-squares scale + translation (no rotation) carrying the 68 iBUG
    landmarks (68×2 pixel x, y) onto ``CANONICAL_IBUG68``."""
    points = _check_landmarks68(landmarks)
    canonical = CANONICAL_IBUG68.astype(np.float64)
    points_mean, canonical_mean = points.mean(axis=0), canonical.mean(axis=0)  # 2 each
    points_centred, canonical_centred = points - points_mean, canonical - canonical_mean
    # Minimise Σ |scale·p + shift − c|²: scale = <p̃, c̃> / |p̃|² (crop units per source pixel).
    scale = float((points_centred * canonical_centred).sum() / max((points_centred**2).sum(), 1e-12))
    if not scale > 1e-9:
        raise ValueError("landmarks are degenerate or mirrored: no box frames them")
    side = 1.0 / scale
    # shift = c̄ − scale·p̄, and a crop point u is at origin + side·u in the source, so the box's
    # origin is p̄ − side·c̄ and its centre half a side further.
    centre = points_mean + (0.5 - canonical_mean) * side
    return (float(centre[0]), float(centre[1]), side)


def landmarks_in_crop(landmarks: np.ndarray, box: CropBox) -> np.ndarray:
    """Source-pixel landmarks (68×2) as x/y in [0, 1] over the crop ``box`` (68×2 float32)."""
    points = _check_landmarks68(landmarks)
    centre_x, centre_y, side = box
    origin = np.array([centre_x - side / 2, centre_y - side / 2])
    return ((points - origin) / side).astype(np.float32)


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or min(frame.shape[:2]) < 1:
        raise ValueError(f"a frame must be H×W×3 uint8 RGB, got {frame.dtype} {frame.shape}")
    return frame


def crop_square(
    frame: np.ndarray, box: CropBox, *, output_size: int, padding: Literal["edge", "black"] = "edge"
) -> np.ndarray:
    """The square ``box`` (centre_x, centre_y, side, source pixels; pixel i spans [i, i+1)) of an
    H×W×3 uint8 frame, resampled bilinearly to output_size × output_size × 3 uint8."""
    frame = _check_frame(frame)
    centre_x, centre_y, side = (float(value) for value in box)
    if not (math.isfinite(centre_x) and math.isfinite(centre_y) and math.isfinite(side) and side > 0):
        raise ValueError(f"crop box must be finite with a positive side, got {box}")
    # A big box is first shrunk by an integer factor (box filter): the padded region below then
    # stays within a few output sizes, however large the box or the frame.
    reduce_factor = max(1, int(side / output_size / 2))
    if reduce_factor > 1:
        frame = np.asarray(Image.fromarray(frame).reduce(reduce_factor))
        centre_x, centre_y, side = (value / reduce_factor for value in (centre_x, centre_y, side))
    height, width = frame.shape[:2]
    left, top = centre_x - side / 2, centre_y - side / 2
    margin = math.ceil(side / output_size) + 2  # the filter's reach when shrinking, and rounding
    x0, y0 = math.floor(left) - margin, math.floor(top) - margin
    x1, y1 = math.ceil(left + side) + margin, math.ceil(top + side) + margin
    inside_x0, inside_y0 = min(max(x0, 0), width), min(max(y0, 0), height)
    inside_x1, inside_y1 = max(min(x1, width), inside_x0), max(min(y1, height), inside_y0)
    inside = frame[inside_y0:inside_y1, inside_x0:inside_x1]  # the region's part within the frame
    if padding == "edge" and inside.size > 0:
        pad_widths = (
            (inside_y0 - y0, y1 - inside_y1), (inside_x0 - x0, x1 - inside_x1), (0, 0)
        )  # fmt: skip
        region = np.pad(inside, pad_widths, mode="edge")
    else:  # black, or a box wholly outside the frame (nothing to replicate)
        region = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        region[inside_y0 - y0 : inside_y1 - y0, inside_x0 - x0 : inside_x1 - x0] = inside
    crop = Image.fromarray(region).resize(
        (output_size, output_size),
        Image.Resampling.BILINEAR,
        box=(left - x0, top - y0, left - x0 + side, top - y0 + side),
    )
    return np.array(crop)  # S×S×3, writable


class _FaceMesh(Protocol):
    """The part of ``mediapipe.solutions.face_mesh.FaceMesh`` used here."""

    def process(self, image: np.ndarray) -> object: ...

    def close(self) -> None: ...


def _open_face_mesh(config: CropConfig) -> _FaceMesh:
    try:
        import mediapipe  # lazy: the server runs without it until a session asks for crop "auto"
    except ImportError as error:
        raise CaptureUnavailable(
            f"automatic face crops (crop 'auto') need mediapipe ({error}): "
            "pip install 'megalive[capture]'"
        ) from None
    return mediapipe.solutions.face_mesh.FaceMesh(
        static_image_mode=False,  # video mode: tracks from the last frame's face, detects on loss
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
        frame = np.ascontiguousarray(_check_frame(frame))  # mediapipe reads the raw buffer
        if not math.isfinite(timestamp_s):
            raise ValueError(f"timestamp must be finite, got {timestamp_s}")
        faces = self._face_landmarks(frame)
        if faces:
            landmarks_px = self._follow(faces)
            box = crop_box_from_landmarks(landmarks_px)
            if self._box_filter is not None:
                smoothed = self._box_filter(np.array(box), timestamp_s)  # 3: cx, cy, side
                box = (float(smoothed[0]), float(smoothed[1]), float(smoothed[2]))
            self._last_box, self._last_landmarks = box, landmarks_in_crop(landmarks_px, box)
        elif self._last_box is None or self._last_landmarks is None:
            raise NoFaceError("no face found in the frame (and none before it to reuse)")
        crop = crop_square(
            frame, self._last_box, output_size=self.config.output_size, padding=self.config.padding
        )
        return CropResult(
            image=crop, box=self._last_box, landmarks=self._last_landmarks.copy(), face_found=bool(faces)
        )

    def _face_landmarks(self, frame: np.ndarray) -> list[np.ndarray]:
        """The iBUG landmarks (68×2 source pixels) of every face the mesh finds."""
        assert self._mesh is not None
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
