"""The "Shape keys (ARKit names)" driver, bpy-free: shape-key names and values plus a head rotation
become one `arkit` frame (tested without Blender; ``sources.ShapeKeySource`` only reads Blender's values).

Payload: one raw little-endian float32 buffer of the 61 curves in ``arkit.ARKIT_CURVES`` order
(Live Link Face order): the 52 blendshapes clamped to [0, 1] (Blender sliders may go beyond), then
headYaw, headPitch, headRoll in radians, then the six eye rotations, always 0 (gaze comes through
the eyeLook* shape keys).

Names: a shape key drives the blendshape whose ARKit name it carries, matched
  1. exactly ("jawOpen"),
  2. ignoring case ("JawOpen", "JAWOPEN"),
  3. after the user's prefix, if one is set ("MyHead_jawOpen" with prefix "MyHead_"),
  4. after any prefix that ends in a separator ``_ . : | -`` or a space ("ARKit_jawOpen",
     "Face.jawOpen", "CC_Base_jawOpen"), ignoring case.
When several keys name one blendshape, the best-ranked match wins, then the first key. Keys that
name no blendshape ("Basis", "Blink_custom") are ignored.

Head angle convention (the one the models learned from SyntheticHeads, ``models/data/heads/``):
the head faces -Y with +Z up, as a Blender character does; its right-handed axes are
up = +Z, right = -X (the subject's right) and forward = -Y. The rotation of the head away from its
neutral pose, D (3×3, in those world/armature axes), is split as D = R_forward(roll) · R_up(yaw) ·
R_right(pitch) (pitch applied first, i.e. Blender Euler order 'XZY' with negated X and Y angles):
  * +headYaw: the nose turns towards the subject's left (+X); a +Z rotation in Blender;
  * +headPitch: the nose lifts; a -X rotation in Blender;
  * +headRoll: the top of the head tilts towards the subject's right (-X), counter-clockwise as
    a camera in front of the face sees it; a -Y rotation in Blender.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from .wire import arkit, protocol

BLENDSHAPES: tuple[str, ...] = arkit.ARKIT_BLENDSHAPES
CURVES: tuple[str, ...] = arkit.ARKIT_CURVES
NUM_BLENDSHAPES = arkit.NUM_BLENDSHAPES
NUM_CURVES = arkit.NUM_CURVES
HEAD_YAW, HEAD_PITCH, HEAD_ROLL = (CURVES.index(name) for name in ("headYaw", "headPitch", "headRoll"))
SEPARATORS = "_.:|- "

_EXACT = {name: index for index, name in enumerate(BLENDSHAPES)}
_FOLDED = {name.casefold(): index for index, name in enumerate(BLENDSHAPES)}

# Match ranks, best first (see the module docstring).
EXACT, CASE, USER_PREFIX, SEPARATED = range(4)


def match_blendshape(name: str, *, prefix: str = "") -> tuple[int, int] | None:
    """(blendshape index, match rank) of the ARKit blendshape a shape key named ``name`` drives, or None."""
    index = _EXACT.get(name)
    if index is not None:
        return index, EXACT
    folded = name.casefold()
    index = _FOLDED.get(folded)
    if index is not None:
        return index, CASE
    if prefix and folded.startswith(prefix.casefold()):
        index = _FOLDED.get(folded[len(prefix) :])
        if index is not None:
            return index, USER_PREFIX
    for position in range(len(folded) - 1, 0, -1):  # the last separator: "CC_Base_jawOpen" -> "jawOpen"
        if folded[position - 1] in SEPARATORS:
            index = _FOLDED.get(folded[position:])
            if index is not None:
                return index, SEPARATED
            break
    return None


@lru_cache(maxsize=32)
def _match_names(names: tuple[str, ...], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    best: dict[int, tuple[int, int]] = {}  # blendshape -> (rank, position of the key)
    for position, name in enumerate(names):
        match = match_blendshape(name, prefix=prefix)
        if match is None:
            continue
        index, rank = match
        if index not in best or rank < best[index][0]:
            best[index] = (rank, position)
    targets = np.array(sorted(best), dtype=np.intp)
    sources = np.array([best[index][1] for index in targets], dtype=np.intp)
    for array in (targets, sources):
        array.flags.writeable = False  # shared through the cache
    return sources, targets


def match_names(names: Iterable[str], *, prefix: str = "") -> dict[str, str]:
    """Which shape key drives which ARKit blendshape: {shape key name: ARKit name} (unmatched keys left out)."""
    names = tuple(names)
    sources, targets = _match_names(names, prefix)
    return {names[source]: BLENDSHAPES[target] for source, target in zip(sources, targets)}


def head_angles(rotation: Sequence[Sequence[float]] | np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in radians of a head rotation D: a 3×3 rotation matrix in Blender axes
    (+Z up, head facing -Y), from the neutral pose to the current one. See the module docstring.

    D = Ry(-roll) · Rz(yaw) · Rx(-pitch) in Blender's own axis rotations, so
    yaw = asin(D[1,0]), pitch = atan2(D[1,2], D[1,1]), roll = atan2(D[2,0], D[0,0]); yaw is within
    ±π/2 (a head turned further than sideways is read the other way round)."""
    d = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    sin_yaw = float(np.clip(d[1, 0], -1.0, 1.0))
    yaw = math.asin(sin_yaw)
    if math.hypot(d[1, 1], d[1, 2]) < 1e-9:  # yaw ±90°: pitch and roll turn about one axis; call all of it pitch
        return yaw, math.atan2(-d[2, 1], d[2, 2]), 0.0
    pitch = math.atan2(d[1, 2], d[1, 1])
    roll = math.atan2(d[2, 0], d[0, 0])
    return yaw, pitch, roll


def rotation_from_angles(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """The 3×3 head rotation D (Blender axes) that ``head_angles`` reads as (yaw, pitch, roll)."""

    def axis(index: int, angle: float) -> np.ndarray:
        c, s = math.cos(angle), math.sin(angle)
        i, j = [(1, 2), (2, 0), (0, 1)][index]
        out = np.eye(3)
        out[i, i], out[i, j], out[j, i], out[j, j] = c, -s, s, c
        return out

    return axis(1, -roll) @ axis(2, yaw) @ axis(0, -pitch)


def arkit_curves(
    names: Sequence[str],
    values: Sequence[float] | np.ndarray,
    *,
    head: Sequence[float] = (0.0, 0.0, 0.0),
    prefix: str = "",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Shape-key names and values (same order) + (yaw, pitch, roll) -> the 61 curves, float32,
    ``arkit.ARKIT_CURVES`` order; blendshapes clamped to [0, 1], unknown names ignored, eyes 0."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(values) != len(names):
        raise ValueError(f"{len(names)} shape-key names but {len(values)} values")
    if out is None or out.shape != (NUM_CURVES,) or out.dtype != np.float32:
        out = np.empty(NUM_CURVES, dtype=np.float32)
    out[:] = 0.0
    sources, targets = _match_names(tuple(names), prefix)
    out[targets] = np.clip(np.nan_to_num(values[sources], nan=0.0), 0.0, 1.0)
    out[HEAD_YAW], out[HEAD_PITCH], out[HEAD_ROLL] = (float(angle) for angle in head)
    return out


def curves_from_mapping(values: Mapping[str, float], *, head: Sequence[float] = (0.0, 0.0, 0.0), prefix: str = "") -> np.ndarray:
    """``arkit_curves`` of a {shape key name: value} map."""
    names = tuple(values)
    return arkit_curves(names, [values[name] for name in names], head=head, prefix=prefix)


def curves_buffer(curves: np.ndarray) -> protocol.RawBuffer:
    """The `arkit` frame's buffer: 61 little-endian float32 (copied: the caller may reuse its array)."""
    curves = np.asarray(curves)
    if curves.shape != (NUM_CURVES,):
        raise ValueError(f"an arkit frame carries {NUM_CURVES} curves, got shape {curves.shape}")
    return protocol.raw_buffer_from_bytes(curves.astype("<f4").tobytes(), dtype="<f4", shape=(NUM_CURVES,))
