"""The 68-point (iBUG) landmark vocabulary: mediapipe's 478-point face mesh -> the 68 points, where a neutral
SyntheticHeads head puts them over its square crop, and the crop-box math that frames a real face the same way.

Shared by the server's live crop (server/capture.py), the drivers (server/drivers.py) and training data
preparation (models/data/prepare.py). Standard library at module level; numpy is imported inside the functions
that take arrays (the hosts ship a copy of this file and may lack numpy).

Landmarks are x right, y down. Over a crop they lie in [0, 1] (pixel i of a resolution-R crop covers
[i, i+1) / R); in a frame they are source pixels. A crop box is (centre x, centre y, side) in source pixels.
"""

from __future__ import annotations

import functools
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
