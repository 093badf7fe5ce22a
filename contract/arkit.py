"""The ARKit curve names, in Live Link Face's packet order: 52 blendshapes, then 9 rotations.

The wire protocol's `arkit` frame (DESIGN §3), the Live Link Face packet, Blender shape keys,
SyntheticHeads' expression vector and the capture graphs' `curves` input all use this order.
Standard library only: the Blender and Unreal hosts ship a copy of this file.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

# The 52 ARKit blendshapes, each in [0, 1].
ARKIT_BLENDSHAPES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight",
    "jawForward", "jawLeft", "jawRight", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)  # fmt: skip
# Head, left eye, right eye rotations in radians (yaw, pitch, roll each).
ARKIT_ROTATIONS: tuple[str, ...] = (
    "headYaw", "headPitch", "headRoll",
    "leftEyeYaw", "leftEyePitch", "leftEyeRoll",
    "rightEyeYaw", "rightEyePitch", "rightEyeRoll",
)  # fmt: skip
ARKIT_CURVES: tuple[str, ...] = ARKIT_BLENDSHAPES + ARKIT_ROTATIONS  # 61
NUM_BLENDSHAPES = len(ARKIT_BLENDSHAPES)  # 52
NUM_CURVES = len(ARKIT_CURVES)  # 61
# Read-only mappings (shared by every importer): a blendshape -> its column in a B×52 expression, a curve -> its
# position among the 61 (the same number for a blendshape; ARKIT_INDEX refuses rotation names on purpose).
ARKIT_INDEX: Mapping[str, int] = types.MappingProxyType({name: index for index, name in enumerate(ARKIT_BLENDSHAPES)})
CURVE_INDEX: Mapping[str, int] = types.MappingProxyType({name: index for index, name in enumerate(ARKIT_CURVES)})
