"""Performance-capture driver frames: validation and temporal stabilisation (DESIGN §2, §4.5).

An `arkit` frame is one float32 buffer of the 61 Live Link Face curves (contract.arkit.ARKIT_CURVES), or
of fewer values with a ``names`` list in the frame header (any subset of those names; the rest are
0). A `landmarks` frame is one float32 buffer of N×2 or N×3 points (N = 68 iBUG or 478 mediapipe),
x right / y down in [0, 1] over the aligned driver crop. Anything else gets a per-frame error
reply that says what is wrong; the session stays open.

Stabilisation: a One-Euro filter per session on the driving signal, with head pose and expression
as separate channels, so a still face can be held steady without making a turning head lag:
- arkit: pose = the 9 head and eye rotations, expression = the 52 blendshapes;
- landmarks: pose = the similarity of the point set (centroid x, y, log scale, roll angle),
  expression = the points in that normalised frame; the two are recombined after filtering.
The defaults come from the jitter and lag measurements in bench/capture_stability.py (README).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from client.protocol import LANDMARK_COUNTS, Buffer, EncodedBuffer, ProtocolError
from contract.arkit import ARKIT_CURVES, CURVE_INDEX, NUM_BLENDSHAPES
from contract.landmarks import ibug68_from_mediapipe
from server.one_euro import OneEuroConfig, OneEuroFilter

BLENDSHAPE_TOLERANCE = 1e-3  # capture apps round; a hair outside [0, 1] is noise, more is a broken sender
MAX_ROTATION_RAD = 2 * math.pi
# iBUG-68 eye corners: the roll angle of a landmark set is the angle of the line between the eyes.
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)


@dataclass(frozen=True)
class SignalFilterConfig:
    """One-Euro settings per channel; None switches a channel's filter off."""

    pose: OneEuroConfig | None
    expression: OneEuroConfig | None
    box: OneEuroConfig | None  # the auto-crop box of image sessions


# Per driver kind, chosen from bench/capture_stability.py on held-out SyntheticHeads motions (README,
# "Performance capture"): they cut output jitter of a held pose by ≥ 3× at ≤ 1 frame of added lag
# after a step. The box filter is the auto-crop's (image sessions), in pixels.
_ARKIT = OneEuroConfig(min_cutoff_hz=0.5, beta=2.0)  # measured: jitter ÷10.1, +0.17 frames of lag
_LANDMARKS = OneEuroConfig(min_cutoff_hz=0.5, beta=8.0)  # measured: jitter ÷5.3, +0.67 frames of lag
_BOX = OneEuroConfig(min_cutoff_hz=1.0, beta=0.05)
DEFAULT_FILTERS: dict[str, SignalFilterConfig] = {
    "image": SignalFilterConfig(pose=None, expression=None, box=_BOX),
    "arkit": SignalFilterConfig(pose=_ARKIT, expression=_ARKIT, box=None),
    "landmarks": SignalFilterConfig(pose=_LANDMARKS, expression=_LANDMARKS, box=None),
}
NO_FILTERS = SignalFilterConfig(pose=None, expression=None, box=None)


def _one_euro_from(fields: Any, default: OneEuroConfig | None, *, channel: str, request_id: int | None) -> OneEuroConfig | None:
    if fields is None:
        return default
    if fields is False:
        return None
    if not isinstance(fields, Mapping) or not set(fields) <= {"min_cutoff_hz", "beta", "derivative_cutoff_hz"}:
        raise ProtocolError(
            "bad_request", f"filter.{channel} must be false or a map of min_cutoff_hz, beta, derivative_cutoff_hz", request_id=request_id
        )
    base = default or OneEuroConfig()
    values = {name: fields.get(name, getattr(base, name)) for name in ("min_cutoff_hz", "beta", "derivative_cutoff_hz")}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values.values()):
        raise ProtocolError("bad_request", f"filter.{channel} values must be finite numbers", request_id=request_id)
    try:
        return OneEuroConfig(**{name: float(v) for name, v in values.items()})
    except ValueError as error:
        raise ProtocolError("bad_request", f"filter.{channel}: {error}", request_id=request_id) from None


def filter_config_from_request(field: Any, *, kind: str, request_id: int | None = None) -> SignalFilterConfig:
    """The `open` request's ``filter`` for a session of driver ``kind``: absent or true = the kind's
    defaults, false = off, or a map per channel ``{"pose": {...} | false, "expression": {...} | false,
    "box": {...} | false}`` (a missing channel keeps its default)."""
    defaults = DEFAULT_FILTERS[kind]
    if field is None or field is True:
        return defaults
    if field is False:
        return NO_FILTERS
    if not isinstance(field, Mapping) or not set(field) <= {"pose", "expression", "box"}:
        raise ProtocolError("bad_request", "filter must be true, false, or a map with pose, expression, box", request_id=request_id)
    return SignalFilterConfig(**{
        channel: _one_euro_from(field.get(channel), getattr(defaults, channel), channel=channel, request_id=request_id)
        for channel in ("pose", "expression", "box")
    })  # fmt: skip


def _float_vector(buffer: Buffer, *, what: str, request_id: int | None) -> np.ndarray:
    if isinstance(buffer, EncodedBuffer) or buffer.dtype != "<f4":
        raise ProtocolError("bad_request", f"{what} must be a raw float32 buffer", request_id=request_id)
    values = buffer.array()
    if not np.isfinite(values).all():
        raise ProtocolError("bad_request", f"{what} hold NaN or infinite values", request_id=request_id)
    return values


def arkit_curves(buffer: Buffer, names: Any = None, *, request_id: int | None = None) -> np.ndarray:
    """An `arkit` frame's payload -> the 61 curves (float32), checked."""
    values = _float_vector(buffer, what="ARKit curves", request_id=request_id).reshape(-1)
    if names is None:
        if values.shape != (len(ARKIT_CURVES),):
            raise ProtocolError(
                "bad_request",
                f"an arkit frame carries {len(ARKIT_CURVES)} curves in Live Link Face order (or a names list), got {values.size} values",
                request_id=request_id,
            )
        curves = values.astype(np.float32)
    else:
        if not isinstance(names, list) or len(names) != values.size or not all(isinstance(n, str) for n in names):
            raise ProtocolError("bad_request", f"names must be a list of {values.size} strings, one per value", request_id=request_id)
        unknown = [name for name in names if name not in CURVE_INDEX]
        if unknown:
            raise ProtocolError("bad_request", f"unknown ARKit curve names: {', '.join(unknown[:5])}", request_id=request_id)
        if len(set(names)) != len(names):
            raise ProtocolError("bad_request", "a curve name appears twice", request_id=request_id)
        curves = np.zeros(len(ARKIT_CURVES), np.float32)
        curves[[CURVE_INDEX[name] for name in names]] = values
    blendshapes = curves[:NUM_BLENDSHAPES]
    outside = np.flatnonzero((blendshapes < -BLENDSHAPE_TOLERANCE) | (blendshapes > 1 + BLENDSHAPE_TOLERANCE))
    if outside.size:
        first = int(outside[0])
        raise ProtocolError(
            "bad_request", f"blendshape {ARKIT_CURVES[first]} = {float(blendshapes[first]):.4g} is outside [0, 1]", request_id=request_id
        )
    if np.abs(curves[NUM_BLENDSHAPES:]).max(initial=0.0) > MAX_ROTATION_RAD:
        raise ProtocolError("bad_request", "head and eye rotations are radians within ±2π", request_id=request_id)
    np.clip(blendshapes, 0.0, 1.0, out=blendshapes)
    return curves


def landmarks_68(buffer: Buffer, *, request_id: int | None = None) -> np.ndarray:
    """A `landmarks` frame's payload -> 68×2 float32 iBUG points in [0, 1] crop coordinates, checked."""
    points = _float_vector(buffer, what="landmarks", request_id=request_id)
    if points.ndim != 2 or points.shape[0] not in LANDMARK_COUNTS or points.shape[1] not in (2, 3):
        raise ProtocolError(
            "bad_request",
            f"landmarks must be N×2 or N×3 with N in {list(LANDMARK_COUNTS)}, got {list(points.shape)}",
            request_id=request_id,
        )
    if points.shape[0] != 68:
        points = ibug68_from_mediapipe(points)
    points = np.ascontiguousarray(points[:, :2], dtype=np.float32)
    if float(np.ptp(points[:, 0])) < 1e-4 or float(np.ptp(points[:, 1])) < 1e-4:
        raise ProtocolError("bad_request", "landmarks are all zeros or collapsed to a point or a line", request_id=request_id)
    if np.abs(points).max() > 4:
        raise ProtocolError("bad_request", "landmarks are crop coordinates in [0, 1], not pixels", request_id=request_id)
    return points


@dataclass(frozen=True)
class LandmarkPose:
    """The similarity part of a landmark set: where it is, how big, how rolled."""

    centre: np.ndarray  # 2
    log_scale: float
    roll: float  # radians, the angle of the line from the left eye's centre to the right eye's

    def as_vector(self) -> np.ndarray:
        return np.array([*self.centre, self.log_scale, self.roll], np.float64)

    @staticmethod
    def from_vector(vector: np.ndarray) -> LandmarkPose:
        return LandmarkPose(centre=vector[:2], log_scale=float(vector[2]), roll=float(vector[3]))


def split_landmarks(points: np.ndarray) -> tuple[LandmarkPose, np.ndarray]:
    """68×2 -> (pose, 68×2 shape in the pose's normalised frame: centred, unit RMS radius, no roll)."""
    centre = points.mean(axis=0)
    centred = points - centre  # 68×2
    scale = max(float(np.sqrt((centred**2).sum(axis=1).mean())), 1e-6)
    eyes = points[RIGHT_EYE].mean(axis=0) - points[LEFT_EYE].mean(axis=0)
    roll = math.atan2(float(eyes[1]), float(eyes[0]))
    cos, sin = math.cos(-roll), math.sin(-roll)
    unrolled = centred @ np.array([[cos, sin], [-sin, cos]])  # rotate every row by -roll
    return LandmarkPose(centre=centre, log_scale=math.log(scale), roll=roll), unrolled / scale


def join_landmarks(pose: LandmarkPose, shape: np.ndarray) -> np.ndarray:
    cos, sin = math.cos(pose.roll), math.sin(pose.roll)
    rolled = shape @ np.array([[cos, sin], [-sin, cos]])  # rotate every row by +roll
    return (rolled * math.exp(pose.log_scale) + pose.centre).astype(np.float32)


class SignalStabiliser:
    """A session's One-Euro filters for its driving signal (pose and expression channels)."""

    def __init__(self, *, kind: str, config: SignalFilterConfig) -> None:
        self.kind = kind
        self.pose = OneEuroFilter(config=config.pose) if config.pose else None
        self.expression = OneEuroFilter(config=config.expression) if config.expression else None

    def __call__(self, signal: np.ndarray, timestamp_s: float) -> np.ndarray:
        """arkit: 61 curves; landmarks: 68×2. Returns the filtered signal (same shape, float32)."""
        if self.kind == "arkit":
            out = signal.astype(np.float32, copy=True)
            if self.expression:
                out[:NUM_BLENDSHAPES] = np.clip(self.expression(signal[:NUM_BLENDSHAPES], timestamp_s), 0.0, 1.0)
            if self.pose:
                out[NUM_BLENDSHAPES:] = self.pose(signal[NUM_BLENDSHAPES:], timestamp_s)
            return out
        pose, shape = split_landmarks(signal)
        if self.pose:
            vector = pose.as_vector()
            # Unwrap the roll next to the last filtered one so a turn through ±π is not a jump of 2π.
            last = self.pose.last
            if last is not None:
                vector[3] = last[3] + math.remainder(vector[3] - last[3], 2 * math.pi)
            pose = LandmarkPose.from_vector(self.pose(vector, timestamp_s))
        if self.expression:
            shape = self.expression(shape, timestamp_s)
        return join_landmarks(pose, shape)
