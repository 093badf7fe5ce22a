"""The 68-point (iBUG) landmark vocabulary: mediapipe's 478-point face mesh -> the 68 points, where a neutral
SyntheticHeads head puts them over its square crop, and the crop-box math that frames a real face the same way.

Shared by the server's live crop (server/capture.py), the drivers (server/drivers.py) and training data
preparation (models/data/prepare.py). Standard library at module level; numpy (and Pillow, for crop_square) are imported inside
the functions that take arrays (the hosts ship a copy of this file and may lack both).

Landmarks are x right, y down. Over a crop they lie in [0, 1] (pixel i of a resolution-R crop covers
[i, i+1) / R); in a frame they are source pixels. A crop box is (centre x, centre y, side) in source pixels.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported lazily
    import numpy as np

NUM_LANDMARKS = 68

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
# A tuple of (x, y) so this module needs no numpy; canonical_ibug68() gives it as a 68×2 array.
CANONICAL_IBUG68_POINTS: tuple[tuple[float, float], ...] = (
    # jaw 0-16: image left -> chin 8 -> image right
    (0.2401, 0.4691), (0.2415, 0.5404), (0.2568, 0.6090), (0.2840, 0.6721), (0.3189, 0.7275),
    (0.3574, 0.7730), (0.3951, 0.8068), (0.4264, 0.8276), (0.5000, 0.8346), (0.5736, 0.8276),
    (0.6049, 0.8068), (0.6426, 0.7730), (0.6811, 0.7275), (0.7160, 0.6721), (0.7432, 0.6090),
    (0.7585, 0.5404), (0.7599, 0.4691),
    # brows 17-26
    (0.3180, 0.3964), (0.3520, 0.3909), (0.3861, 0.3891), (0.4201, 0.3909), (0.4542, 0.3964),
    (0.5458, 0.3964), (0.5799, 0.3909), (0.6139, 0.3891), (0.6480, 0.3909), (0.6820, 0.3964),
    # nose bridge 27-30, nostril base 31-35
    (0.5000, 0.4589), (0.5000, 0.4940), (0.5000, 0.5291), (0.5000, 0.5643), (0.4693, 0.5796),
    (0.4846, 0.5830), (0.5000, 0.5864), (0.5154, 0.5830), (0.5307, 0.5796),
    # eyes 36-41 (image left), 42-47
    (0.3326, 0.4564), (0.3705, 0.4295), (0.4084, 0.4264), (0.4464, 0.4614), (0.4084, 0.4767),
    (0.3705, 0.4751), (0.5536, 0.4614), (0.5916, 0.4264), (0.6295, 0.4295), (0.6674, 0.4564),
    (0.6295, 0.4751), (0.5916, 0.4767),
    # mouth: outer 48-59, inner 60-67
    (0.4306, 0.6564), (0.4537, 0.6433), (0.4769, 0.6411), (0.5000, 0.6460), (0.5231, 0.6411),
    (0.5463, 0.6433), (0.5694, 0.6564), (0.5463, 0.6731), (0.5231, 0.6760), (0.5000, 0.6768),
    (0.4769, 0.6760), (0.4537, 0.6731), (0.4341, 0.6564), (0.4653, 0.6564), (0.5000, 0.6564),
    (0.5347, 0.6564), (0.5659, 0.6564), (0.5347, 0.6564), (0.5000, 0.6564), (0.4653, 0.6564),
)  # fmt: skip

CropBox = tuple[float, float, float]  # (centre_x, centre_y, side) in source pixels

# Face regions that metrics and losses look at, as iBUG point ranges: a region's box is its points'
# bounding box grown on every side by ``padding`` × the inter-ocular distance (between the eyes' centres),
# which scales with the face but not with the expression (a closed eye or mouth keeps a usable box).
LEFT_EYE_POINTS = tuple(range(36, 42))  # image left
RIGHT_EYE_POINTS = tuple(range(42, 48))
MOUTH_POINTS = tuple(range(48, 68))
# The 68 points as the polylines a landmark image draws (the few-shot talking heads' input, DESIGN §4.4): per part,
# its points in drawing order and whether the line closes on itself. Each part has its own colour in the image.
LANDMARK_POLYLINES: dict[str, tuple[tuple[int, ...], bool]] = {
    "jaw": (tuple(range(0, 17)), False),
    "brow_left": (tuple(range(17, 22)), False),  # image left
    "brow_right": (tuple(range(22, 27)), False),
    "nose_bridge": (tuple(range(27, 31)), False),
    "nostrils": (tuple(range(30, 36)), True),
    "eye_left": (LEFT_EYE_POINTS, True),
    "eye_right": (RIGHT_EYE_POINTS, True),
    "lips_outer": (tuple(range(48, 60)), True),
    "lips_inner": (tuple(range(60, 68)), True),
}
FACE_REGIONS: dict[str, tuple[tuple[int, ...], float]] = {
    "eyes": (LEFT_EYE_POINTS + RIGHT_EYE_POINTS, 0.25),
    "mouth": (MOUTH_POINTS, 0.2),
}


@functools.cache
def canonical_ibug68() -> np.ndarray:
    """CANONICAL_IBUG68_POINTS as a 68×2 float32 array, read-only (one shared array: nobody edits it by accident)."""
    import numpy as np

    canonical = np.array(CANONICAL_IBUG68_POINTS, dtype=np.float32)
    canonical.flags.writeable = False
    return canonical


def ibug68_from_mediapipe(points: np.ndarray) -> np.ndarray:
    """The 68 iBUG landmarks (68×2 float32, x and y only) from mediapipe's 478×2 or 478×3 face-mesh
    points (468 rows, the mesh without iris refinement, are accepted too). Units are kept."""
    import numpy as np

    points = np.asarray(points)
    if (
        points.ndim != 2
        or points.shape[0] not in MEDIAPIPE_POINT_COUNTS
        or points.shape[1] not in (2, 3)
        or not np.issubdtype(points.dtype, np.number)
    ):
        raise ValueError(
            f"face-mesh points must be a numeric 478×2 or 478×3 array (468 rows without iris), got {points.dtype} {points.shape}"
        )
    return points[list(MEDIAPIPE_TO_IBUG68), :2].astype(np.float32)  # 478×{2,3} -> 68×2


def _check_landmarks68(landmarks: np.ndarray) -> np.ndarray:
    import numpy as np

    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"iBUG landmarks must be 68×2, got shape {landmarks.shape}")
    if not np.isfinite(landmarks).all():
        raise ValueError("landmarks hold NaN or infinite values")
    return landmarks


def crop_box_from_landmarks(landmarks: np.ndarray) -> CropBox:
    """The square box (centre_x, centre_y, side) in source pixels that frames a face the way the
    model was trained: the least-squares scale + translation (no rotation) carrying the 68 iBUG
    landmarks (68×2 pixel x, y) onto the canonical ones. No rotation on purpose: the model learned
    head roll from the driver, so the crop must not undo it."""
    import numpy as np

    points = _check_landmarks68(landmarks)
    canonical = canonical_ibug68().astype(np.float64)
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
    import numpy as np

    points = _check_landmarks68(landmarks)
    centre_x, centre_y, side = box
    origin = np.array([centre_x - side / 2, centre_y - side / 2])
    return ((points - origin) / side).astype(np.float32)


def check_frame(frame: np.ndarray) -> np.ndarray:
    """An H×W×3 uint8 RGB frame as an array, or ValueError."""
    import numpy as np

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or min(frame.shape[:2]) < 1:
        raise ValueError(f"a frame must be H×W×3 uint8 RGB, got {frame.dtype} {frame.shape}")
    return frame


def crop_square(frame: np.ndarray, box: CropBox, *, output_size: int, padding: str = "edge") -> np.ndarray:
    """The square ``box`` (centre_x, centre_y, side, source pixels; pixel i spans [i, i+1)) of an
    H×W×3 uint8 frame, resampled bilinearly to output_size × output_size × 3 uint8. Where the box leaves the
    frame, ``padding`` "edge" replicates the border pixels and "black" fills zeros (a box wholly outside is black).
    The server's live crop and training data preparation both cut with this, so training sees what serving sees."""
    import numpy as np
    from PIL import Image

    frame = check_frame(frame)
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
