"""The landmark image of the few-shot talking heads (DESIGN §4.4): 68 points drawn as coloured polylines, one colour per
part (jaw, brows, nose, eyes, lips: LANDMARK_POLYLINES in contract/landmarks.py), on black.

One drawing for training (models/fewshot/landmark_raster.py wraps it) and for serving (the server draws each frame's
points before the few-shot graph), so a served model sees exactly the pictures it learned from.

    points 68×2 (pixels of the size×size image, x right, y down; pixel i spans [i, i+1)) -> size×size×3 float32 in [0, 1]

A pixel's intensity for a segment is 1 within ``thickness / 2`` pixels of it (distance from the pixel centre), falling
linearly to 0 one pixel further out (anti-aliased lines); where lines overlap the brighter wins per channel. Each
segment is evaluated only over its own bounding box (plus the line's reach), so a frame costs a few milliseconds.
Standard library at module level, numpy inside the functions (contract's rule: the hosts ship this package as is).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from contract.landmarks import LANDMARK_POLYLINES, NUM_LANDMARKS

if TYPE_CHECKING:  # annotations only: numpy is imported lazily
    import numpy as np

LINE_THICKNESS = 1.5  # pixels, at every resolution the models use (64 to 256)

# One RGB colour per part, distinct and bright on black (the order of LANDMARK_POLYLINES).
PART_COLOURS: dict[str, tuple[float, float, float]] = {
    "jaw": (1.0, 1.0, 1.0),
    "brow_left": (1.0, 0.6, 0.0),
    "brow_right": (1.0, 0.6, 0.0),
    "nose_bridge": (0.0, 0.6, 1.0),
    "nostrils": (0.0, 0.6, 1.0),
    "eye_left": (0.0, 1.0, 0.3),
    "eye_right": (0.0, 1.0, 0.3),
    "lips_outer": (1.0, 0.0, 0.3),
    "lips_inner": (0.8, 0.0, 1.0),
}


@functools.cache
def polyline_segments() -> tuple[tuple[tuple[int, int], tuple[float, float, float]], ...]:
    """Every segment of every part: (its two point indices, its part's colour)."""
    segments: list[tuple[tuple[int, int], tuple[float, float, float]]] = []
    for part, (points, closed) in LANDMARK_POLYLINES.items():
        ends = list(zip(points[:-1], points[1:])) + ([(points[-1], points[0])] if closed else [])
        segments += [(end, PART_COLOURS[part]) for end in ends]
    return tuple(segments)


def draw_landmark_image(points: np.ndarray, *, size: int, thickness: float = LINE_THICKNESS) -> np.ndarray:
    """68×2 landmark pixels -> size×size×3 float32 landmark image (see the module docstring). Points off the image
    draw what falls on it; non-finite points raise ValueError."""
    import numpy as np

    points = np.asarray(points, np.float64)
    if points.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must be {NUM_LANDMARKS}×2, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks must be finite")
    if size < 8 or thickness <= 0:
        raise ValueError(f"a landmark image needs size ≥ 8 and a positive thickness, got {size} and {thickness}")
    image = np.zeros((size, size, 3), np.float32)
    reach = thickness / 2 + 1  # beyond this distance a segment draws nothing
    for (first, second), colour in polyline_segments():
        start, end = points[first], points[second]
        x0 = max(0, math.floor(min(start[0], end[0]) - reach))
        x1 = min(size, math.ceil(max(start[0], end[0]) + reach))
        y0 = max(0, math.floor(min(start[1], end[1]) - reach))
        y1 = min(size, math.ceil(max(start[1], end[1]) + reach))
        if x0 >= x1 or y0 >= y1:
            continue  # wholly off the image
        xs = np.arange(x0, x1) + 0.5 - start[0]  # w: pixel centres relative to the segment's start
        ys = np.arange(y0, y1) + 0.5 - start[1]  # h
        direction = end - start
        length2 = max(float(direction @ direction), 1e-6)
        along = np.clip((xs[None, :] * direction[0] + ys[:, None] * direction[1]) / length2, 0, 1)  # h×w
        distance = np.hypot(xs[None, :] - along * direction[0], ys[:, None] - along * direction[1])  # h×w
        strength = np.clip(1 - (distance - thickness / 2), 0, 1).astype(np.float32)  # 1 on the line, 0 a pixel out
        window = image[y0:y1, x0:x1]
        np.maximum(window, strength[..., None] * np.asarray(colour, np.float32), out=window)
    return image


def _inter_ocular(points: Any) -> Any:
    """...×68×2 -> ...: the distance between the eyes' centres (numpy arrays or torch tensors alike)."""
    left, right = points[..., 36:42, :].mean(-2), points[..., 42:48, :].mean(-2)
    return ((left - right) ** 2).sum(-1) ** 0.5


def retarget_landmarks(driver: Any, driver_neutral: Any, target_neutral: Any) -> Any:
    """Cross-driving without the driver's face shape (DESIGN §4.4): the target's neutral landmarks plus the driver's
    displacement from its own neutral, scaled by the ratio of their inter-ocular distances. Works on numpy arrays and
    torch tensors alike (any leading batch shape; points in any one unit)."""
    scale = _inter_ocular(target_neutral) / _inter_ocular(driver_neutral)
    return target_neutral + (driver - driver_neutral) * scale[..., None, None]


def draw_landmark_images(points: np.ndarray, *, size: int, thickness: float = LINE_THICKNESS) -> np.ndarray:
    """A batch as a landmark-driven model's graph takes it: B×68×2 points in [0, 1] over the crop -> B×3×size×size
    float32 (each drawn by ``draw_landmark_image`` at size × the points)."""
    import numpy as np

    images = [draw_landmark_image(sample * size, size=size, thickness=thickness) for sample in np.asarray(points, np.float64)]
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.float32)
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))  # B×H×W×3 -> B×3×H×W
