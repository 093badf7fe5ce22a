"""SyntheticHeads: a procedural cartoon-head renderer written in torch (DESIGN.md §5).

Every machine can make training data without downloads, and because identity and motion are
separate inputs, ``render(identity_of_A, motion_of_B)`` *is* the cross-reenactment ground truth.

Geometry (all "head units", the head is about 1.6 wide):
    * head space: x to the subject's left (image right at yaw 0), y up, z towards the camera;
    * the skull is an ellipsoid whose lower half is taller (jaw drop, chin) and whose width tapers
      towards the chin; features are painted as soft signed-distance shapes in the surface's (x, y)
      and shaded by a bump height field (nose, cheeks, lips, brow ridge, eye sockets);
    * hair is a second, larger ellipsoid cut below a hairline that runs from the forehead over the
      temples to the nape; the far (inner) side of it shows as long hair behind the head;
    * camera: orthographic along -z; image x in [-1, 1] left->right, y in [-1, 1] bottom->top;
      world = scale * R(yaw, pitch, roll) @ head + (tx, ty, 0).
Pose signs: +yaw turns the nose towards image right (subject's left), +pitch lifts the nose,
+roll turns the head counter-clockwise in the image.

Landmarks are points sampled on the very curves the painter draws (jaw outline, brow centre lines,
nose ridge, lid and lip curves), lifted onto the ellipsoid and projected with the same pose, in
pixel units with pixel centres at i + 0.5.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Motion.expression is B×52 in ARKIT_BLENDSHAPES order; performance capture speaks in Live Link Face's 61 curves
# (ARKIT_CURVES: the 52 blendshapes, then head and eye rotations in radians), the wire protocol's `arkit` frame.
# ARKIT_INDEX gives a blendshape's column in Motion.expression.
from contract.arkit import ARKIT_BLENDSHAPES, ARKIT_INDEX, ARKIT_ROTATIONS, NUM_BLENDSHAPES

# The controls the renderer draws; the others (jawForward, mouthDimple*, mouthShrug*,
# mouthPress*, noseSneer*) are accepted and have no effect.
MODELLED_BLENDSHAPES: tuple[str, ...] = tuple(
    name for name in ARKIT_BLENDSHAPES if not name.startswith(("jawForward", "mouthDimple", "mouthShrug", "mouthPress", "noseSneer"))
)

DEFAULT_SCALE = 0.68  # skull half-height in image half-heights


# --------------------------------------------------------------------------------------------
# Batched parameter containers
# --------------------------------------------------------------------------------------------


class _TensorBatch:
    """Frozen dataclass of tensors whose first dimension is the batch."""

    def to(self, device: torch.device | str) -> Self:
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **moved)

    def __getitem__(self, index: Tensor | slice | Sequence[int]) -> Self:
        if isinstance(index, int):  # keep the batch dimension
            index = slice(index, index + 1)
        picked = {f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **picked)

    def __len__(self) -> int:
        return getattr(self, dataclasses.fields(self)[0].name).shape[0]

    @classmethod
    def cat(cls, batches: Sequence[Self]) -> Self:
        joined = {f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in dataclasses.fields(cls)}
        return cls(**joined)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Field name -> numpy array (for np.savez: plain arrays, no pickle)."""
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        """The inverse of to_arrays; a missing or extra field raises KeyError."""
        names = {f.name for f in dataclasses.fields(cls)}
        if set(arrays) != names:
            raise KeyError(f"{cls.__name__} fields differ: missing {sorted(names - set(arrays))}, extra {sorted(set(arrays) - names)}")
        return cls(**{name: torch.as_tensor(arrays[name]) for name in names})

    def as_vector(self) -> Tensor:
        """All parameters flattened per sample: B×D (D fixed per class)."""
        parts = [getattr(self, f.name).reshape(len(self), -1) for f in dataclasses.fields(self)]
        return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class Identity(_TensorBatch):
    """Who the head is: proportions, colours, hair, lighting, background. Shapes in comments."""

    head_width: Tensor  # B, ellipsoid half-width
    head_height: Tensor  # B, ellipsoid half-height (upper half)
    head_depth: Tensor  # B
    chin_length: Tensor  # B, lower half-height relative to head_height
    jaw_taper: Tensor  # B, how much the face narrows towards the chin
    eye_spacing: Tensor  # B, eye centre |x|
    eye_height: Tensor  # B, eye centre y
    eye_width: Tensor  # B, eye half-width
    eye_opening: Tensor  # B, upper lid height above the eye line
    eye_tilt: Tensor  # B, outer-corner lift
    iris_size: Tensor  # B, iris radius
    brow_height: Tensor  # B, brow line above the eye line
    brow_thickness: Tensor  # B
    brow_arch: Tensor  # B
    nose_length: Tensor  # B, eye line to nose tip
    nose_width: Tensor  # B
    nose_prominence: Tensor  # B, bump strength
    mouth_height: Tensor  # B, mouth line y (negative)
    mouth_width: Tensor  # B, half-width
    upper_lip: Tensor  # B, thickness
    lower_lip: Tensor  # B, thickness
    skin_rgb: Tensor  # B×3
    skin_texture: Tensor  # B, noise amplitude
    skin_noise_phase: Tensor  # B×6
    blush: Tensor  # B
    lip_rgb: Tensor  # B×3
    iris_rgb: Tensor  # B×3
    hair_rgb: Tensor  # B×3
    hair_amount: Tensor  # B, 0 = bald, 1 = hair
    hairline: Tensor  # B, forehead hairline y relative to head_height
    hair_volume: Tensor  # B, hair ellipsoid margin over the skull
    hair_length: Tensor  # B, 0 = short crop, 1 = long
    hair_part: Tensor  # B, side-part asymmetry in [-1, 1]
    clothes_rgb: Tensor  # B×3
    light_direction: Tensor  # B×3, unit, world space (towards the light)
    light_ambient: Tensor  # B
    light_rgb: Tensor  # B×3
    background_rgb: Tensor  # B×3×3, three palette colours
    background_style: Tensor  # B×3, one-hot: gradient / stripes / blobs
    background_angle: Tensor  # B
    background_frequency: Tensor  # B
    background_blobs: Tensor  # B×3×3, (x, y, radius) per blob


@dataclass(frozen=True)
class Motion(_TensorBatch):
    """How the head moves: rigid pose and ARKit expression (values in [0, 1])."""

    yaw: Tensor  # B, radians
    pitch: Tensor  # B, radians
    roll: Tensor  # B, radians
    tx: Tensor  # B, image units (image spans [-1, 1])
    ty: Tensor  # B, image units, up is positive
    scale: Tensor  # B
    expression: Tensor  # B×52, ARKIT_BLENDSHAPES order

    def with_controls(self, controls: Mapping[str, float | Tensor]) -> Motion:
        """A copy with some ARKit controls set, e.g. {"jawOpen": 1.0}; unknown names raise."""
        expression = self.expression.clone()
        for name, value in controls.items():
            if name not in ARKIT_INDEX:
                raise KeyError(f"unknown ARKit blendshape {name!r}")
            expression[:, ARKIT_INDEX[name]] = torch.as_tensor(value, dtype=expression.dtype)
        return dataclasses.replace(self, expression=expression)

    def with_pose(
        self,
        *,
        yaw: float | None = None,
        pitch: float | None = None,
        roll: float | None = None,
    ) -> Motion:
        """A copy with the given rotation angles (radians) set for the whole batch."""
        out = self
        for name, value in (("yaw", yaw), ("pitch", pitch), ("roll", roll)):
            if value is not None:
                out = dataclasses.replace(out, **{name: torch.full_like(getattr(out, name), value)})
        return out

    def arkit_curves(self) -> Tensor:
        """The motion as the 61 wire curves: B×61. Eye rotations are zero: the renderer's gaze is the
        eyeLook* blendshapes. Translation and scale have no ARKit curve (see ``framing``)."""
        rotations = torch.zeros(len(self), len(ARKIT_ROTATIONS), dtype=self.expression.dtype)
        rotations[:, 0], rotations[:, 1], rotations[:, 2] = self.yaw, self.pitch, self.roll
        return torch.cat([self.expression, rotations], dim=1)  # B×52 + B×9

    def framing(self) -> Tensor:
        """B×3: head translation and scale offset (tx, ty, scale - DEFAULT_SCALE), which ARKit lacks."""
        return torch.stack([self.tx, self.ty, self.scale - DEFAULT_SCALE], dim=1)


@dataclass(frozen=True)
class HeadRender:
    """One rendered batch plus the exact parameters that made it."""

    rgb: Tensor  # B×3×H×W in [0, 1]
    alpha: Tensor  # B×1×H×W in [0, 1]: head, hair, ears, neck and shoulders
    landmarks: Tensor  # B×68×2 pixel (x, y), iBUG 68 order, pixel centres at i + 0.5
    identity: Identity
    motion: Motion


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------

_SKIN_TONES = torch.tensor(
    [[0.30, 0.19, 0.13], [0.47, 0.31, 0.21], [0.66, 0.47, 0.35], [0.83, 0.64, 0.52],
     [0.95, 0.79, 0.69]]
)  # fmt: skip
_IRIS_COLOURS = torch.tensor(
    [[0.30, 0.17, 0.08], [0.14, 0.08, 0.04], [0.45, 0.34, 0.14], [0.22, 0.42, 0.22],
     [0.22, 0.42, 0.68], [0.42, 0.48, 0.54]]
)  # fmt: skip
_HAIR_COLOURS = torch.tensor(
    [[0.05, 0.04, 0.04], [0.16, 0.10, 0.06], [0.33, 0.20, 0.11], [0.78, 0.62, 0.36],
     [0.58, 0.22, 0.08], [0.62, 0.62, 0.62], [0.20, 0.28, 0.66], [0.78, 0.36, 0.58]]
)  # fmt: skip
_HAIR_WEIGHTS = torch.tensor([0.25, 0.22, 0.18, 0.12, 0.08, 0.07, 0.04, 0.04])


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _palette_pick(
    palette: Tensor,
    n: int,
    jitter: float,
    generator: torch.Generator,
    weights: Tensor | None = None,
) -> Tensor:
    """n colours drawn from a K×3 palette (optionally weighted) with uniform jitter: n×3."""
    probabilities = torch.ones(len(palette)) if weights is None else weights
    choice = torch.multinomial(probabilities, n, replacement=True, generator=generator)
    noise = (torch.rand(n, 3, generator=generator) * 2 - 1) * jitter
    return (palette[choice] + noise).clamp(0, 1)


def sample_identities(n: int, *, generator: torch.Generator) -> Identity:
    """n random identities on the CPU; the same generator state gives the same identities."""
    g = generator
    u = lambda low, high: _uniform(n, low, high, g)  # noqa: E731 - local shorthand

    tone = torch.rand(n, generator=g) * (len(_SKIN_TONES) - 1)  # piecewise-linear skin palette
    low_index = tone.floor().long().clamp(max=len(_SKIN_TONES) - 2)
    frac = (tone - low_index).unsqueeze(1)
    skin = _SKIN_TONES[low_index] * (1 - frac) + _SKIN_TONES[low_index + 1] * frac
    skin = (skin + (torch.rand(n, 3, generator=g) * 2 - 1) * 0.025).clamp(0, 1)
    lip_tint = torch.tensor([0.66, 0.20, 0.24])
    lip_strength = u(0.55, 0.85).unsqueeze(1)
    lip = (skin * (1 - lip_strength) + lip_tint * lip_strength * (0.6 + 0.6 * skin.mean(1, keepdim=True))).clamp(0, 1)

    azimuth, elevation = u(-0.9, 0.9), u(0.1, 0.8)
    light = torch.stack(
        [torch.sin(azimuth) * torch.cos(elevation), torch.sin(elevation),
         torch.cos(azimuth) * torch.cos(elevation)], dim=1
    )  # fmt: skip
    warmth = u(-1, 1).unsqueeze(1)
    light_rgb = 1 + warmth * torch.tensor([0.08, 0.0, -0.08])

    background = torch.rand(n, 3, 3, generator=g) * 0.8 + 0.1  # B×3 colours×RGB
    grey = background.mean(dim=2, keepdim=True)
    background = grey + (background - grey) * u(0.2, 1.0).view(n, 1, 1)  # desaturate some
    style = F.one_hot(torch.randint(0, 3, (n,), generator=g), 3).float()
    blobs = torch.rand(n, 3, 3, generator=g)
    blobs = blobs * torch.tensor([2.0, 2.0, 0.5]) + torch.tensor([-1.0, -1.0, 0.25])  # x,y,radius

    bald = torch.rand(n, generator=g) < 0.08
    return Identity(
        head_width=u(0.74, 0.86),
        head_height=u(0.96, 1.06),
        head_depth=u(0.80, 0.92),
        chin_length=u(0.95, 1.08),
        jaw_taper=u(0.08, 0.32),
        eye_spacing=u(0.30, 0.35),
        eye_height=u(0.08, 0.16),
        eye_width=u(0.15, 0.185),
        eye_opening=u(0.09, 0.115),
        eye_tilt=u(-0.015, 0.03),
        iris_size=u(0.062, 0.075),
        brow_height=u(0.15, 0.21),
        brow_thickness=u(0.055, 0.095),
        brow_arch=u(0.0, 0.05),
        nose_length=u(0.26, 0.36),
        nose_width=u(0.07, 0.11),
        nose_prominence=u(0.7, 1.3),
        mouth_height=u(-0.50, -0.42),
        mouth_width=u(0.17, 0.24),
        upper_lip=u(0.035, 0.06),
        lower_lip=u(0.045, 0.075),
        skin_rgb=skin,
        skin_texture=u(0.0, 0.06),
        skin_noise_phase=torch.rand(n, 6, generator=g) * (2 * math.pi),
        blush=u(0.0, 1.0),
        lip_rgb=lip,
        iris_rgb=_palette_pick(_IRIS_COLOURS, n, 0.05, g),
        hair_rgb=_palette_pick(_HAIR_COLOURS, n, 0.04, g, _HAIR_WEIGHTS),
        hair_amount=(~bald).float(),
        hairline=u(0.42, 0.8),
        hair_volume=u(0.03, 0.2),
        hair_length=u(0.0, 1.0),
        hair_part=u(-1.0, 1.0),
        clothes_rgb=torch.rand(n, 3, generator=g) * 0.8 + 0.1,
        light_direction=light,
        light_ambient=u(0.35, 0.55),
        light_rgb=light_rgb,
        background_rgb=background,
        background_style=style,
        background_angle=u(0, math.pi),
        background_frequency=u(6.0, 20.0),
        background_blobs=blobs,
    )


def neutral_motion(n: int) -> Motion:
    """Frontal, centred, default scale, all expression controls at 0."""
    zeros = torch.zeros(n)
    return Motion(
        yaw=zeros, pitch=zeros, roll=zeros, tx=zeros, ty=zeros,
        scale=torch.full((n,), DEFAULT_SCALE), expression=torch.zeros(n, NUM_BLENDSHAPES),
    )  # fmt: skip


def _set_gaze(expression: Tensor, gaze_x: Tensor, gaze_y: Tensor) -> None:
    """Write a conjugate gaze into the eyeLook* controls in place.

    gaze_x > 0 looks towards the subject's left (left eye out, right eye in); gaze_y > 0 looks up.
    expression: B×52; gaze_x, gaze_y: B in [-1, 1].
    """
    left, right = gaze_x.clamp(min=0), (-gaze_x).clamp(min=0)
    up, down = gaze_y.clamp(min=0), (-gaze_y).clamp(min=0)
    for name, value in (
        ("eyeLookOutLeft", left), ("eyeLookInRight", left), ("eyeLookInLeft", right),
        ("eyeLookOutRight", right), ("eyeLookUpLeft", up), ("eyeLookUpRight", up),
        ("eyeLookDownLeft", down), ("eyeLookDownRight", down),
    ):  # fmt: skip
        expression[:, ARKIT_INDEX[name]] = value


def sample_motions(n: int, *, generator: torch.Generator) -> Motion:
    """n random poses and sparse random expressions (each control active with p≈0.3)."""
    g = generator
    active = torch.rand(n, NUM_BLENDSHAPES, generator=g) < 0.3
    expression = torch.rand(n, NUM_BLENDSHAPES, generator=g) * active
    # Eyes blink together most of the time.
    both = torch.rand(n, generator=g) < 0.7
    blink = expression[:, ARKIT_INDEX["eyeBlinkLeft"]]
    expression[both, ARKIT_INDEX["eyeBlinkRight"]] = blink[both]
    gaze_on = (torch.rand(n, generator=g) < 0.6).float()
    _set_gaze(expression, _uniform(n, -1, 1, g) * gaze_on, _uniform(n, -1, 1, g) * gaze_on)
    return Motion(
        yaw=_uniform(n, -0.45, 0.45, g),
        pitch=_uniform(n, -0.3, 0.3, g),
        roll=_uniform(n, -0.25, 0.25, g),
        tx=_uniform(n, -0.08, 0.08, g),
        ty=_uniform(n, -0.08, 0.08, g),
        scale=_uniform(n, 0.62, 0.74, g),
        expression=expression,
    )


def _lowpass_noise(channels: int, num_frames: int, *, cutoff_hz: float, fps: float, generator: torch.Generator) -> Tensor:
    """Unit-variance Gaussian-filtered white noise: channels×num_frames."""
    sigma = fps / (2 * math.pi * cutoff_hz)  # frames
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.square().sum().sqrt()  # keeps unit variance
    white = torch.randn(channels, 1, num_frames + 2 * radius, generator=generator)
    # channels×1×(T+2r) -> channels×1×T -> channels×T
    return F.conv1d(white, kernel.view(1, 1, -1)).squeeze(1)


def _events(
    num_frames: int,
    *,
    fps: float,
    first: tuple[float, float],
    gap: tuple[float, float],
    duration: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """Raised-cosine 0→1→0 pulses at random times (seconds): num_frames."""
    times = torch.arange(num_frames) / fps
    out = torch.zeros(num_frames)
    start = float(_uniform(1, *first, generator))
    while start < num_frames / fps:
        length = float(_uniform(1, *duration, generator))
        phase = ((times - start) / length).clamp(0, 1)
        out = torch.maximum(out, 0.5 - 0.5 * torch.cos(2 * math.pi * phase))
        start += length + float(_uniform(1, *gap, generator))
    return out


def sample_clip(num_frames: int, *, generator: torch.Generator, fps: float = 25.0) -> Motion:
    """A talking-head clip: smooth head motion, blinks every 2-5 s, speech, smiles, brow raises."""
    g, t = generator, num_frames
    pose = _lowpass_noise(6, t, cutoff_hz=0.25, fps=fps, generator=g)  # 6×T
    slow = _lowpass_noise(4, t, cutoff_hz=0.15, fps=fps, generator=g)  # 4×T
    syllables = _lowpass_noise(3, t, cutoff_hz=4.0, fps=fps, generator=g)  # 3×T
    gaze = _lowpass_noise(2, t, cutoff_hz=0.6, fps=fps, generator=g)  # 2×T

    speaking = torch.sigmoid(4 * (slow[0] + 0.3))  # mostly talking, with pauses
    expression = torch.zeros(t, NUM_BLENDSHAPES)
    blink = _events(t, fps=fps, first=(0.3, 2.5), gap=(1.8, 4.5), duration=(0.15, 0.3), generator=g)
    brows = _events(t, fps=fps, first=(1.0, 6.0), gap=(3.0, 8.0), duration=(0.6, 1.5), generator=g)
    smile = (slow[1] - 0.4).clamp(min=0).clamp(max=1)

    def set_(name: str, value: Tensor) -> None:
        expression[:, ARKIT_INDEX[name]] = value.clamp(0, 1)

    set_("eyeBlinkLeft", blink)
    set_("eyeBlinkRight", blink)
    set_("jawOpen", speaking * (0.35 * syllables[0] + 0.15).clamp(min=0))
    set_("mouthFunnel", speaking * 0.5 * syllables[1])
    set_("mouthPucker", speaking * 0.5 * syllables[2])
    set_("mouthSmileLeft", smile)
    set_("mouthSmileRight", smile * 0.9)
    set_("browInnerUp", brows * (0.6 + 0.2 * slow[2]))
    set_("browOuterUpLeft", brows * 0.5)
    set_("browOuterUpRight", brows * 0.5)
    set_("cheekSquintLeft", smile * 0.5)
    set_("cheekSquintRight", smile * 0.5)
    _set_gaze(expression, (0.4 * gaze[0]).clamp(-1, 1), (0.3 * gaze[1]).clamp(-1, 1))
    return Motion(
        yaw=(0.22 * pose[0]).clamp(-0.5, 0.5),
        pitch=(0.1 * pose[1] + 0.05 * syllables[0] * speaking).clamp(-0.35, 0.35),  # nods
        roll=(0.07 * pose[2]).clamp(-0.25, 0.25),
        tx=(0.025 * pose[3]).clamp(-0.08, 0.08),
        ty=(0.02 * pose[4]).clamp(-0.08, 0.08),
        scale=DEFAULT_SCALE + (0.015 * pose[5]).clamp(-0.05, 0.05),
        expression=expression,
    )


# --------------------------------------------------------------------------------------------
# Face layout: identity + expression -> per-sample feature geometry (all B×1, head units)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    a: Tensor  # head half-width
    b_up: Tensor
    b_low: Tensor  # lower half-height: chin and jaw drop
    c: Tensor
    jaw_taper: Tensor
    cheek_puff: Tensor
    eye_x: Tensor
    eye_y: Tensor
    eye_w: Tensor
    eye_hu: Tensor  # upper lid height when open
    eye_hl: Tensor  # lower lid depth
    eye_tilt: Tensor
    iris_r: Tensor
    open_upper: tuple[Tensor, Tensor]  # (left, right) 0 = closed
    open_lower: tuple[Tensor, Tensor]
    look_out: tuple[Tensor, Tensor]  # iris shift, + = away from the nose
    look_up: tuple[Tensor, Tensor]
    brow_y: Tensor
    brow_thick: Tensor
    brow_arch: Tensor
    brow_inner: tuple[Tensor, Tensor]  # inner-end lift
    brow_outer: tuple[Tensor, Tensor]
    brow_down: tuple[Tensor, Tensor]
    nose_tip_y: Tensor
    nose_w: Tensor
    nose_h: Tensor
    mouth_x: Tensor
    mouth_y: Tensor
    mouth_hw: tuple[Tensor, Tensor]  # half-width towards (left, right)
    corner_lift: tuple[Tensor, Tensor]
    gap_upper: Tensor  # inner upper lip above the mouth line
    gap_lower: Tensor
    lip_upper: Tensor
    lip_lower: Tensor
    tongue: Tensor
    smile: tuple[Tensor, Tensor]


def _layout(identity: Identity, motion: Motion) -> _Layout:
    column = lambda value: value.unsqueeze(1)  # noqa: E731 - B -> B×1
    expression = motion.expression

    def ex(name: str) -> Tensor:  # B×1
        return expression[:, ARKIT_INDEX[name]].unsqueeze(1)

    def sided(stem: str) -> tuple[Tensor, Tensor]:
        return ex(stem + "Left"), ex(stem + "Right")

    blink, wide, squint = sided("eyeBlink"), sided("eyeWide"), sided("eyeSquint")
    look_in, look_out, look_up, look_down = (
        sided("eyeLookIn"), sided("eyeLookOut"), sided("eyeLookUp"), sided("eyeLookDown"),
    )  # fmt: skip
    cheek_squint, smile, frown = sided("cheekSquint"), sided("mouthSmile"), sided("mouthFrown")
    stretch, lower_down = sided("mouthStretch"), sided("mouthLowerDown")
    upper_up = sided("mouthUpperUp")
    brow_down, brow_outer = sided("browDown"), sided("browOuterUp")
    jaw_open, mouth_close = ex("jawOpen"), ex("mouthClose")
    funnel, pucker, puff = ex("mouthFunnel"), ex("mouthPucker"), ex("cheekPuff")

    eye_w, eye_hu = column(identity.eye_width), column(identity.eye_opening)
    open_upper = tuple(
        ((1 - blink[s]) * (1 + 0.5 * wide[s] - 0.3 * squint[s] - 0.35 * look_down[s]
                           + 0.15 * look_up[s] - 0.2 * cheek_squint[s])).clamp(0, 1.6)
        for s in (0, 1)
    )  # fmt: skip
    open_lower = tuple(
        (1 - 0.5 * squint[s] - 0.35 * cheek_squint[s] - 0.25 * smile[s] + 0.2 * wide[s])
        .clamp(0.15, 1.3)
        for s in (0, 1)
    )  # fmt: skip
    look_out_shift = tuple((look_out[s] - look_in[s]) * 0.55 * eye_w for s in (0, 1))
    look_up_shift = tuple((look_up[s] - look_down[s]) * 0.45 * eye_hu for s in (0, 1))

    width_scale = 1 - 0.35 * pucker - 0.25 * funnel
    mouth_w = column(identity.mouth_width) * width_scale
    mouth_hw = tuple(mouth_w * (1 + 0.1 * jaw_open + 0.22 * smile[s] + 0.25 * stretch[s] - 0.05 * frown[s]) for s in (0, 1))
    corner_lift = tuple(0.09 * smile[s] - 0.06 * frown[s] - 0.01 * stretch[s] for s in (0, 1))
    jaw_gap = 0.28 * jaw_open * (1 - 0.9 * mouth_close)
    lower_avg, upper_avg = (lower_down[0] + lower_down[1]) / 2, (upper_up[0] + upper_up[1]) / 2
    lip_scale = 1 + 0.5 * pucker + 0.3 * funnel
    b = column(identity.head_height)
    return _Layout(
        a=column(identity.head_width),
        b_up=b,
        b_low=b * column(identity.chin_length) + 0.16 * jaw_open,
        c=column(identity.head_depth),
        jaw_taper=column(identity.jaw_taper),
        cheek_puff=puff,
        eye_x=column(identity.eye_spacing),
        eye_y=column(identity.eye_height),
        eye_w=eye_w,
        eye_hu=eye_hu,
        eye_hl=eye_hu * 0.55,
        eye_tilt=column(identity.eye_tilt),
        iris_r=column(identity.iris_size) * (1 + 0.08 * (wide[0] + wide[1]) / 2),
        open_upper=open_upper,
        open_lower=open_lower,
        look_out=look_out_shift,
        look_up=look_up_shift,
        brow_y=column(identity.eye_height + identity.brow_height),
        brow_thick=column(identity.brow_thickness),
        brow_arch=column(identity.brow_arch),
        brow_inner=(0.08 * ex("browInnerUp"),) * 2,
        brow_outer=tuple(0.08 * brow_outer[s] for s in (0, 1)),
        brow_down=tuple(0.06 * brow_down[s] for s in (0, 1)),
        nose_tip_y=column(identity.eye_height - identity.nose_length),
        nose_w=column(identity.nose_width),
        nose_h=column(identity.nose_prominence),
        mouth_x=0.07 * (ex("mouthLeft") - ex("mouthRight")) + 0.05 * (ex("jawLeft") - ex("jawRight")),
        mouth_y=column(identity.mouth_height) - 0.05 * jaw_open,
        mouth_hw=mouth_hw,
        corner_lift=corner_lift,
        gap_upper=0.25 * jaw_gap + 0.04 * upper_avg + 0.02 * funnel,
        gap_lower=0.75 * jaw_gap + 0.05 * lower_avg + 0.025 * funnel,
        lip_upper=column(identity.upper_lip) * lip_scale * (1 - 0.6 * ex("mouthRollUpper")),
        lip_lower=column(identity.lower_lip) * lip_scale * (1 - 0.6 * ex("mouthRollLower")),
        tongue=ex("tongueOut"),
        smile=smile,
    )


def _sided(x: Tensor, pair: tuple[Tensor, Tensor]) -> Tensor:
    """Pick the subject's-left value where x > 0, else the right one (broadcast)."""
    return torch.where(x > 0, pair[0], pair[1])


def _face_width(y: Tensor, lay: _Layout) -> Tensor:
    """Width multiplier of the skull at height y: tapers to the chin, bulges with cheekPuff."""
    below = (-y / lay.b_low).clamp(0, 1)
    puff = lay.cheek_puff * 0.09 * torch.exp(-(((y - lay.mouth_y - 0.1) / 0.22) ** 2))
    return 1 - lay.jaw_taper * below * below + puff


def _surface_z(x: Tensor, y: Tensor, lay: _Layout) -> Tensor:
    """Front-surface depth of the skull at (x, y) (0 outside the outline)."""
    b = torch.where(y > 0, lay.b_up, lay.b_low)
    inside = 1 - (x / (lay.a * _face_width(y, lay))) ** 2 - (y / b) ** 2
    return lay.c * inside.clamp(min=0).sqrt()


def _eye_curves(x: Tensor, y: Tensor, lay: _Layout) -> dict[str, Tensor]:
    """Lid curves of the eye on x's side, in eye-local coordinates (dx outward, ye up)."""
    dx = x.abs() - lay.eye_x  # + = towards the outer corner
    ye = y - lay.eye_y - lay.eye_tilt * dx / lay.eye_w
    q = (1 - (dx / lay.eye_w) ** 2).clamp(min=0)
    open_lower, open_upper = _sided(x, lay.open_lower), _sided(x, lay.open_upper)
    lower = -lay.eye_hl * open_lower * q
    gap = (lay.eye_hu + lay.eye_hl * open_lower) * open_upper * q * (1 - 0.15 * dx / lay.eye_w)
    return {"dx": dx, "ye": ye, "q": q, "lower": lower, "upper": lower + gap, "gap": gap}


def _brow_curve(x: Tensor, lay: _Layout) -> dict[str, Tensor]:
    """Brow centre line on x's side: bt in [-1 inner, 1 outer], centre y and thickness."""
    down = _sided(x, lay.brow_down)
    half_length = lay.eye_w * 1.3
    bt = (x.abs() - (lay.eye_x + 0.01 - 0.3 * down)) / half_length
    lift = _sided(x, lay.brow_inner) * (1 - bt) / 2 + _sided(x, lay.brow_outer) * (1 + bt) / 2
    centre = lay.brow_y + lay.brow_arch * (1 - bt * bt) + lift - down * (0.7 * (1 - bt) / 2 + 0.3)
    thickness = lay.brow_thick * (1 - 0.45 * (bt + 1) / 2)
    return {"bt": bt, "centre": centre, "thickness": thickness, "half_length": half_length}


def _mouth_curves(x: Tensor, lay: _Layout) -> dict[str, Tensor]:
    """Lip curves as functions of x: outer/inner upper and lower lip lines and the mouth line."""
    xr = x - lay.mouth_x
    left = torch.sigmoid(xr / 0.03)  # blend the two sides smoothly through the middle
    half_width = left * lay.mouth_hw[0] + (1 - left) * lay.mouth_hw[1]
    lift = left * lay.corner_lift[0] + (1 - left) * lay.corner_lift[1]
    t = xr / half_width
    q = (1 - t * t).clamp(min=0)
    line = lay.mouth_y + lift * t * t
    opening = q.sqrt()
    inner_upper = line + lay.gap_upper * opening
    inner_lower = line - lay.gap_lower * opening
    lip_shape = q.pow(0.35)
    bow = lay.lip_upper * 0.35 * torch.exp(-((xr / 0.035) ** 2))  # cupid's bow dip
    return {
        "t": t, "q": q, "half_width": half_width, "line": line,
        "inner_upper": inner_upper, "inner_lower": inner_lower,
        "outer_upper": inner_upper + lay.lip_upper * lip_shape - bow * lip_shape,
        "outer_lower": inner_lower - lay.lip_lower * lip_shape,
    }  # fmt: skip


def _jaw_outline_points(lay: _Layout) -> tuple[Tensor, Tensor]:
    """17 jaw points (image left -> chin -> image right) on the face outline: B×17 each."""
    theta = torch.linspace(0, math.pi, 17, device=lay.a.device).unsqueeze(0)  # 1×17
    top, chin = lay.eye_y - 0.03, -0.96 * lay.b_low
    y = top - (top - chin) * torch.sin(theta)  # B×17
    b = torch.where(y > 0, lay.b_up, lay.b_low)
    outline = lay.a * _face_width(y, lay) * (1 - (y / b) ** 2).clamp(min=0).sqrt()
    side = -torch.cos(theta)
    side = torch.where(side.abs() < 1e-6, torch.zeros_like(side), side.sign())
    return side * outline * 0.96, y


def _landmarks_head(lay: _Layout) -> tuple[Tensor, Tensor]:
    """iBUG-68 landmarks in head-space (x, y): B×68 each, sampled from the painted curves."""
    bsz, device = lay.a.shape[0], lay.a.device
    jaw_x, jaw_y = _jaw_outline_points(lay)

    def row(values: Sequence[float]) -> Tensor:  # -> 1×K
        return torch.tensor(values, device=device, dtype=torch.float32).unsqueeze(0)

    # Brows: subject's right brow (x < 0) from outer to inner, then left brow inner to outer.
    brow_t = row([1.0, 0.5, 0.0, -0.5, -1.0])
    bt_scale = lay.eye_w * 1.3
    brow_x = []
    for sign, ts in ((-1.0, brow_t), (1.0, -brow_t)):
        down = lay.brow_down[0 if sign > 0 else 1]
        brow_x.append(sign * (lay.eye_x + 0.01 - 0.3 * down + ts * 0.92 * bt_scale))
    brow_x = torch.cat(brow_x, dim=1)  # B×10
    brow_y = _brow_curve(brow_x, lay)["centre"]

    # Nose: bridge (27-30) then the nostril base (31-35).
    k = row([0.0, 1 / 3, 2 / 3, 1.0])
    bridge_y = lay.eye_y + (lay.nose_tip_y - lay.eye_y) * k  # B×4
    bridge_x = torch.zeros_like(bridge_y)
    base_x = lay.nose_w * row([-1.0, -0.5, 0.0, 0.5, 1.0])  # B×5
    base_y = lay.nose_tip_y - row([0.045, 0.055, 0.065, 0.055, 0.045])

    # Eyes: right eye 36 outer, 37-38 upper, 39 inner, 40-41 lower; left eye 42 inner .. 47.
    eye_dx = row([1.0, 1 / 3, -1 / 3, -1.0, -1 / 3, 1 / 3])  # outward offsets of the 6 points
    upper = row([0, 1, 1, 0, 0, 0]).bool()
    # Mirrored: the left eye's offsets are the right eye's negated (42 inner .. 45 outer .. 47).
    eye_x = torch.cat([-(lay.eye_x + eye_dx * lay.eye_w * 0.999), lay.eye_x - eye_dx * lay.eye_w * 0.999], dim=1)  # B×12
    eye_upper = torch.cat([upper, upper], dim=1)  # 1×12
    curves = _eye_curves(eye_x, torch.zeros_like(eye_x), lay)
    lid = torch.where(eye_upper, torch.maximum(curves["upper"], curves["lower"]), curves["lower"])
    eye_y = lay.eye_y + lay.eye_tilt * curves["dx"] / lay.eye_w + lid

    # Lips: outer 48-59 then inner 60-67, image left to right along the top, back along the bottom.
    outer_t = row([-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3, 0.0, -1 / 3, -2 / 3])
    inner_t = row([-0.95, -0.5, 0.0, 0.5, 0.95, 0.5, 0.0, -0.5])
    lip_t = torch.cat([outer_t, inner_t], dim=1)  # 1×20
    half_width = torch.where(lip_t > 0, lay.mouth_hw[0], lay.mouth_hw[1])
    lip_x = lay.mouth_x + lip_t * half_width * 0.999  # B×20
    m = _mouth_curves(lip_x, lay)
    which = torch.tensor([2, 0, 0, 0, 0, 0, 2, 1, 1, 1, 1, 1, 2, 3, 3, 3, 2, 4, 4, 4], device=device).expand(
        bsz, -1
    )  # 0 outer upper, 1 outer lower, 2 corner line, 3 inner upper, 4 inner lower
    options = torch.stack([m["outer_upper"], m["outer_lower"], m["line"], m["inner_upper"], m["inner_lower"]], dim=2)  # B×20×5
    lip_y = options.gather(2, which.unsqueeze(2)).squeeze(2)  # B×20

    xs = torch.cat([jaw_x, brow_x, bridge_x, base_x, eye_x, lip_x], dim=1)  # B×68
    ys = torch.cat([jaw_y, brow_y, bridge_y, base_y, eye_y, lip_y], dim=1)  # B×68
    return xs, ys


# --------------------------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------------------------


def _rotation(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch): B×3×3, maps head space to camera space."""
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    rx = torch.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], dim=1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=1).view(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], dim=1).view(-1, 3, 3)
    return rz @ ry @ rx


def _soft(distance: Tensor, edge: Tensor | float) -> Tensor:
    """Coverage of a signed distance (positive inside) with a one-pixel soft edge."""
    return torch.sigmoid(distance / edge)


def _mix(base: Tensor, colour: Tensor, weight: Tensor) -> Tensor:
    """Blend B×3×N base towards colour (B×3×1 or B×3×N) by weight (B×N)."""
    return base + (colour - base) * weight.unsqueeze(1)


def _rgb(colour: Tensor) -> Tensor:
    """B×3 -> B×3×1 for broadcasting against B×3×N pixels."""
    return colour.unsqueeze(2)


def _intersect(
    ox: Tensor, oy: Tensor, oz: Tensor, d: tuple[Tensor, Tensor, Tensor], *,
    a: Tensor, b_up: Tensor, b_low: Tensor, c: Tensor, width: Callable[[Tensor], Tensor],
    iterations: int = 3, far: bool = False,
) -> dict[str, Tensor]:  # fmt: skip
    """Ray / tapered ellipsoid x²/(a·w(y))² + y²/b(y)² + z²/c² = 1 (b = b_up above 0, b_low below).

    Rays o + t·d (o: B×N per component, d: B×1); w(y) is made exact by fixed-point iterations on
    the hit height (rays are near-horizontal in head space, so it converges in a few steps).
    Returns near (and, if asked, far) t, and `rim`: 1 - closest approach radius (> 0 on a hit).
    """
    dx, dy, dz = d
    y_near = y_far = oy
    out: dict[str, Tensor] = {}
    for _ in range(iterations):
        for which in ("near", "far") if far else ("near",):
            y_est = y_near if which == "near" else y_far
            ax = a * width(y_est)
            by = torch.where(y_est > 0, b_up, b_low)
            # Scaled space: the ellipsoid is the unit sphere.
            sx, sy, sz = ox / ax, oy / by, oz / c
            ex, ey, ez = dx / ax, dy / by, dz / c
            dd = ex * ex + ey * ey + ez * ez
            od = sx * ex + sy * ey + sz * ez
            oo = sx * sx + sy * sy + sz * sz
            closest = (oo - od * od / dd).clamp(min=0)
            root = ((1 - closest).clamp(min=0) * dd).sqrt() / dd
            t = -od / dd + (-root if which == "near" else root)
            if which == "near":
                y_near, out["near"], out["rim"] = oy + t * dy, t, 1 - closest.sqrt()
            else:
                y_far, out["far"] = oy + t * dy, t
    return out


class SyntheticHeads:
    """Renders batches of procedural heads: ``render(identity, motion) -> HeadRender``."""

    def __init__(self, *, resolution: int = 128, device: torch.device | str = "cpu") -> None:
        if resolution < 16:
            raise ValueError(f"resolution must be at least 16, got {resolution}")
        self.resolution = resolution
        self.device = torch.device(device)
        centres = (torch.arange(resolution, device=self.device, dtype=torch.float32) + 0.5) / resolution
        xs = centres * 2 - 1
        ys = 1 - centres * 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # H×W each
        self._pixel_x = grid_x.reshape(1, -1)  # H×W -> 1×N
        self._pixel_y = grid_y.reshape(1, -1)

    def landmarks(self, identity: Identity, motion: Motion) -> Tensor:
        """iBUG-68 landmarks without rendering: B×68×2 pixel (x, y)."""
        identity, motion = identity.to(self.device), motion.to(self.device)
        return self._project_landmarks(_layout(identity, motion), motion)

    def _project_landmarks(self, lay: _Layout, motion: Motion) -> Tensor:
        hx, hy = _landmarks_head(lay)  # B×68 each
        hz = _surface_z(hx, hy, lay)
        head = torch.stack([hx, hy, hz], dim=1)  # B×3×68
        rotation = _rotation(motion.yaw, motion.pitch, motion.roll)  # B×3×3
        world = motion.scale.view(-1, 1, 1) * (rotation @ head)  # B×3×68
        px = (world[:, 0] + motion.tx.unsqueeze(1) + 1) / 2 * self.resolution
        py = (1 - (world[:, 1] + motion.ty.unsqueeze(1))) / 2 * self.resolution
        return torch.stack([px, py], dim=2)  # B×68×2

    def render(self, identity: Identity, motion: Motion) -> HeadRender:
        identity, motion = identity.to(self.device), motion.to(self.device)
        if len(identity) != len(motion):
            raise ValueError(f"identity batch {len(identity)} != motion batch {len(motion)}")
        bsz, res = len(identity), self.resolution
        lay = _layout(identity, motion)
        rotation = _rotation(motion.yaw, motion.pitch, motion.roll)  # B×3×3
        r = [[rotation[:, i, j].unsqueeze(1) for j in range(3)] for i in range(3)]  # B×1 entries
        scale = motion.scale.unsqueeze(1)  # B×1
        pixel_world = 2.0 / res
        edge = 0.6 * pixel_world / scale  # one soft pixel in head units: B×1
        world_x, world_y = self._pixel_x, self._pixel_y  # 1×N

        # Camera ray through each pixel, in head space: o = Rᵀ(p - t)/s, d = Rᵀ(0, 0, -1).
        qx = (world_x - motion.tx.unsqueeze(1)) / scale  # B×N
        qy = (world_y - motion.ty.unsqueeze(1)) / scale
        ox, oy, oz = (r[0][i] * qx + r[1][i] * qy for i in range(3))
        ray = (-r[2][0], -r[2][1], -r[2][2])

        # Skull.
        skull = _intersect(
            ox, oy, oz, ray, a=lay.a, b_up=lay.b_up, b_low=lay.b_low, c=lay.c,
            width=lambda y: _face_width(y, lay),
        )  # fmt: skip
        t = skull["near"]
        hx, hy, hz = ox + t * ray[0], oy + t * ray[1], oz + t * ray[2]
        face_cover = _soft(skull["rim"] * lay.a, edge)
        w = _face_width(hy, lay)
        dw = (_face_width(hy + 1e-3, lay) - _face_width(hy - 1e-3, lay)) / 2e-3
        b_at = torch.where(hy > 0, lay.b_up, lay.b_low)
        aw = lay.a * w
        normal = [hx / aw**2, hy / b_at**2 - hx * hx * dw / (lay.a**2 * w**3), hz / lay.c**2]

        # Bump height field: its gradient perturbs the normal (nose, cheeks, lips, sockets...).
        bump_x, bump_y = self._bump_gradient(hx, hy, lay)
        length = torch.sqrt(normal[0] ** 2 + normal[1] ** 2 + normal[2] ** 2)
        normal = [n / length for n in normal]
        nz = normal[2].abs()
        normal = [normal[0] - bump_x * nz, normal[1] - bump_y * nz, normal[2]]
        length = torch.sqrt(normal[0] ** 2 + normal[1] ** 2 + normal[2] ** 2)
        normal = [n / length for n in normal]
        face_normal = self._to_world(normal, r)

        face_rgb = self._paint_face(hx, hy, face_normal, lay, identity, edge)  # B×3×N

        # Hair: a bigger ellipsoid cut below a hairline; near side in front, far side behind.
        volume = identity.hair_volume.unsqueeze(1)
        length_h = identity.hair_length.unsqueeze(1)
        hair_centre_y, hair_centre_z = 0.06, -0.04
        flare = 0.25 * length_h
        hair = _intersect(
            ox, oy - hair_centre_y, oz - hair_centre_z, ray,
            a=lay.a + volume, b_up=lay.b_up + volume * 1.2 - hair_centre_y,
            b_low=lay.b_up * (0.8 + 0.55 * length_h) + volume, c=lay.c + volume,
            width=lambda y: 1 + flare * (-y / lay.b_up).clamp(0, 1), iterations=2, far=True,
        )  # fmt: skip
        hair_cover = _soft(hair["rim"] * lay.a, edge) * identity.hair_amount.unsqueeze(1)
        layers_rgb, layers_alpha = [], []
        for which in ("near", "far"):
            th = hair[which]
            px, py, pz = ox + th * ray[0], oy + th * ray[1], oz + th * ray[2]
            around = torch.atan2(px, pz - hair_centre_z)  # 0 front, ±π/2 sides, ±π back
            keep = self._hair_keep(around, py - hair_centre_y, lay, identity, edge)
            rgb = self._paint_hair(px, py, pz, around, which == "far", identity, r)
            layers_rgb.append(rgb)
            layers_alpha.append(hair_cover * keep)
        hair_front_rgb, hair_back_rgb = layers_rgb
        hair_front_alpha, hair_back_alpha = layers_alpha

        ears_rgb, ears_alpha = self._paint_ears(world_x, world_y, lay, identity, motion, r, edge)
        body_rgb, body_alpha = self._paint_body(world_x, world_y, lay, identity, motion, pixel_world)
        background = self._paint_background(world_x, world_y, identity)

        # Front-to-back "over" compositing.
        layers = [
            (hair_front_rgb, hair_front_alpha),
            (face_rgb, face_cover),
            (ears_rgb, ears_alpha),
            (body_rgb, body_alpha),
            (hair_back_rgb, hair_back_alpha),
        ]
        colour = torch.zeros(bsz, 3, res * res, device=self.device)
        transmittance = torch.ones(bsz, res * res, device=self.device)
        for rgb, alpha in layers:
            colour = colour + rgb.clamp(0, 1) * (alpha * transmittance).unsqueeze(1)
            transmittance = transmittance * (1 - alpha)
        colour = colour + background * transmittance.unsqueeze(1)

        rgb = colour.clamp(0, 1).view(bsz, 3, res, res)  # B×3×N -> B×3×H×W
        alpha = (1 - transmittance).clamp(0, 1).view(bsz, 1, res, res)  # B×N -> B×1×H×W
        landmarks = self._project_landmarks(lay, motion)
        return HeadRender(rgb=rgb, alpha=alpha, landmarks=landmarks, identity=identity, motion=motion)

    # ---- pieces ---------------------------------------------------------------------------

    @staticmethod
    def _to_world(normal: Sequence[Tensor], r: list[list[Tensor]]) -> list[Tensor]:
        return [r[i][0] * normal[0] + r[i][1] * normal[1] + r[i][2] * normal[2] for i in range(3)]

    @staticmethod
    def _bump_gradient(x: Tensor, y: Tensor, lay: _Layout) -> tuple[Tensor, Tensor]:
        """(∂h/∂x, ∂h/∂y) of a bump height field made of Gaussians (nose, cheeks, lips, sockets,
        brow ridge, chin), analytic so each bump costs one exp."""
        ax, side = x.abs(), torch.where(x > 0, 1.0, -1.0)
        grad_x, grad_y = torch.zeros_like(x), torch.zeros_like(x)

        def add(
            amplitude: Tensor | float,
            dx: Tensor,
            dy: Tensor,
            sx: Tensor | float,
            sy: Tensor | float,
            mirrored: bool,
        ) -> None:
            nonlocal grad_x, grad_y
            bump = amplitude * torch.exp(-((dx / sx) ** 2) - (dy / sy) ** 2)
            gx = -2 * dx / sx**2 * bump
            grad_x = grad_x + (gx * side if mirrored else gx)  # d|x|/dx = sign(x)
            grad_y = grad_y - 2 * dy / sy**2 * bump

        nose_mid = (lay.eye_y + lay.nose_tip_y) / 2
        nose_half = (lay.eye_y - lay.nose_tip_y) / 2
        smile = _sided(x, lay.smile)
        add(0.04 * lay.nose_h, x, y - nose_mid, 0.045, nose_half, False)  # bridge
        add(0.07 * lay.nose_h, x, y - lay.nose_tip_y, 0.055, 0.05, False)  # tip
        add(0.045 * lay.nose_h, ax - 0.8 * lay.nose_w, y - lay.nose_tip_y + 0.015, 0.04, 0.035, True)
        add(0.03 + 0.04 * smile, ax - 0.36, y - lay.mouth_y - 0.26 - 0.04 * smile, 0.13, 0.11, True)
        add(0.12 * lay.cheek_puff, ax - 0.38, y - lay.mouth_y - 0.06, 0.17, 0.17, True)
        add(0.03, x - lay.mouth_x, y - lay.mouth_y, lay.mouth_hw[0], 0.07, False)  # lips
        add(0.02, x, y - lay.brow_y + 0.02, 0.45, 0.1, False)  # brow ridge
        add(-0.035, ax - lay.eye_x, y - lay.eye_y, 0.15, 0.09, True)  # eye sockets
        add(0.03, x, y + 0.85 * lay.b_low, 0.13, 0.08, False)  # chin
        return grad_x, grad_y

    @staticmethod
    def _paint_face(x: Tensor, y: Tensor, normal: list[Tensor], lay: _Layout, identity: Identity, edge: Tensor) -> Tensor:
        """Skin, brows, nose, mouth and eyes on the skull surface: B×3×N."""
        ax = x.abs()
        phase = identity.skin_noise_phase.unsqueeze(2)  # B×6×1
        # Skin texture: a few oblique sinusoids (blotches and pores) with per-identity phases.
        noise = (
            torch.sin(3.1 * x + 2.3 * y + phase[:, 0]) * 0.5
            + torch.sin(-2.2 * x + 3.7 * y + phase[:, 1]) * 0.5
            + torch.sin(23.0 * x + 7.0 * y + phase[:, 2]) * 0.4
            + torch.sin(-11.0 * x + 19.0 * y + phase[:, 3]) * 0.4
            + torch.sin(31.0 * x - 13.0 * y + phase[:, 4]) * 0.3
            + torch.sin(5.0 * x + 37.0 * y + phase[:, 5]) * 0.3
        )
        skin = _rgb(identity.skin_rgb) * (1 + identity.skin_texture.view(-1, 1, 1) * noise.unsqueeze(1))
        cheek = torch.exp(-(((ax - 0.36) / 0.12) ** 2) - ((y - lay.mouth_y - 0.24) / 0.1) ** 2)
        blush = identity.blush.unsqueeze(1) * cheek * 0.08
        skin = skin + torch.stack([blush, -0.6 * blush, -0.5 * blush], dim=1)
        eye = _eye_curves(x, y, lay)
        socket = torch.exp(-((eye["dx"] / (lay.eye_w * 1.5)) ** 2) - ((eye["ye"] - 0.02) / (lay.eye_hu * 1.8)) ** 2)
        skin = skin * (1 - 0.1 * socket).unsqueeze(1)

        # Brows.
        brow = _brow_curve(x, lay)
        brow_mask = _soft(brow["thickness"] / 2 - (y - brow["centre"]).abs(), edge) * _soft(
            (1 - brow["bt"].abs()) * brow["half_length"], edge
        )
        brow_rgb = _rgb(identity.hair_rgb) * 0.6 + 0.04
        skin = _mix(skin, brow_rgb, brow_mask * 0.92)

        # Nostrils and the shadow under the nose tip.
        nostril_d = 1 - torch.sqrt(((ax - 0.42 * lay.nose_w) / 0.028) ** 2 + ((y - lay.nose_tip_y + 0.045) / 0.014) ** 2)
        nostril = _soft(nostril_d * 0.014, edge)
        under_nose = torch.exp(-((x / 0.07) ** 2) - ((y - lay.nose_tip_y + 0.075) / 0.03) ** 2)
        skin = skin * (1 - 0.65 * nostril - 0.12 * under_nose).unsqueeze(1)

        # Lips.
        mouth = _mouth_curves(x, lay)
        inside_x = _soft((1 - mouth["t"].abs()) * mouth["half_width"], edge)
        lips = _soft(mouth["outer_upper"] - y, edge) * _soft(y - mouth["outer_lower"], edge) * inside_x
        skin = _mix(skin, _rgb(identity.lip_rgb), lips)
        seam = torch.exp(-(((y - mouth["line"]) / (1.5 * edge)) ** 2)) * lips
        skin = skin * (1 - 0.45 * seam).unsqueeze(1)

        # Lighting: Lambert + ambient, a weak sheen.
        light = identity.light_direction
        lambert = (normal[0] * light[:, 0:1] + normal[1] * light[:, 1:2] + normal[2] * light[:, 2:3]).clamp(min=0)
        ambient = identity.light_ambient.unsqueeze(1)
        shade = ambient + (1 - ambient) * lambert  # B×N
        half_z = light[:, 2:3] + 1
        half_norm = torch.sqrt(light[:, 0:1] ** 2 + light[:, 1:2] ** 2 + half_z**2)
        spec_dot = (normal[0] * light[:, 0:1] + normal[1] * light[:, 1:2] + normal[2] * half_z) / half_norm
        sheen = 0.06 * spec_dot.clamp(min=0) ** 24
        colour = skin * shade.unsqueeze(1) * _rgb(identity.light_rgb) + sheen.unsqueeze(1)

        # Mouth interior (dark), teeth under the upper lip, tongue.
        gap_weight = ((mouth["inner_upper"] - mouth["inner_lower"]) / (1.5 * edge)).clamp(0, 1)
        interior = _soft(mouth["inner_upper"] - y, edge) * _soft(y - mouth["inner_lower"], edge) * inside_x * gap_weight
        depth = ((y - mouth["inner_lower"]) / (mouth["inner_upper"] - mouth["inner_lower"] + 1e-4)).clamp(0, 1)
        inner_rgb = torch.stack([0.08 + 0.14 * depth, 0.02 + 0.03 * depth, 0.03 + 0.03 * depth], 1)
        teeth_line = mouth["inner_upper"] - 0.035 * mouth["q"].sqrt()
        teeth = _soft(y - teeth_line, edge) * _soft(0.7 - mouth["t"].abs(), 0.05)
        inner_rgb = _mix(inner_rgb, torch.tensor([0.8, 0.78, 0.72], device=x.device).view(1, 3, 1), teeth)
        tongue_d = 1 - torch.sqrt(((x - lay.mouth_x) / 0.09) ** 2 + ((y - mouth["inner_lower"] - 0.01) / (0.02 + 0.08 * lay.tongue)) ** 2)
        tongue = _soft(tongue_d * 0.05, edge) * (0.3 + 0.7 * lay.tongue)
        inner_rgb = _mix(
            inner_rgb,
            torch.tensor([0.75, 0.35, 0.38], device=x.device).view(1, 3, 1),
            tongue * (y < mouth["inner_upper"]),
        )
        colour = _mix(colour, inner_rgb * (0.5 + 0.5 * shade).unsqueeze(1), interior)
        tongue_out = _soft(tongue_d * 0.05, edge) * (lay.tongue > 0.05) * (1 - interior) * _soft(mouth["inner_lower"] + 0.02 - y, edge)
        colour = _mix(
            colour,
            torch.tensor([0.75, 0.35, 0.38], device=x.device).view(1, 3, 1) * shade.unsqueeze(1),
            tongue_out,
        )

        # Eyes: sclera, iris, pupil, highlight, then lashes on the lid line.
        open_mask = _soft(eye["upper"] - eye["ye"], edge) * _soft(eye["ye"] - eye["lower"], edge)
        open_mask = open_mask * (eye["gap"] / (1.5 * edge)).clamp(0, 1)
        below_lid = (eye["upper"] - eye["ye"]).clamp(min=0)  # shadow of the upper lid on the eyeball
        sclera = (0.72 + 0.25 * eye["q"]) * (1 - 0.25 * torch.exp(-below_lid / 0.025))
        eye_rgb = torch.tensor([0.95, 0.93, 0.9], device=x.device).view(1, 3, 1) * sclera.unsqueeze(1)
        iris_centre_y = (lay.eye_hu - lay.eye_hl) * 0.3 + _sided(x, lay.look_up)
        ix, iy = eye["dx"] - _sided(x, lay.look_out), eye["ye"] - iris_centre_y
        radius = torch.sqrt(ix * ix + iy * iy)
        iris = _soft(lay.iris_r - radius, edge)
        limbus = torch.exp(-(((radius - lay.iris_r) / (0.3 * lay.iris_r)) ** 2))
        iris_rgb = _rgb(identity.iris_rgb) * (0.65 + 0.55 * (radius / lay.iris_r).clamp(0, 1) * (iy < 0) + 0.2 * (1 - limbus)).unsqueeze(1)
        eye_rgb = _mix(eye_rgb, iris_rgb * (1 - 0.5 * limbus).unsqueeze(1), iris)
        pupil = _soft(0.42 * lay.iris_r - radius, edge)
        eye_rgb = _mix(eye_rgb, torch.full((1, 3, 1), 0.03, device=x.device), pupil)
        glint_x = ix * torch.sign(x) + 0.35 * lay.iris_r
        glint = _soft(0.2 * lay.iris_r - torch.sqrt(glint_x**2 + (iy - 0.35 * lay.iris_r) ** 2), edge)
        eye_rgb = _mix(eye_rgb, torch.ones(1, 3, 1, device=x.device), glint * 0.9)
        eye_light = (0.75 + 0.25 * shade).unsqueeze(1) * _rgb(identity.light_rgb)
        colour = _mix(colour, eye_rgb * eye_light, open_mask)
        outline = _soft(lay.eye_w * 1.06 - eye["dx"].abs(), edge)
        lash_top = _soft(eye["ye"] - eye["upper"] + 0.5 * edge, edge) * _soft(
            eye["upper"] + 0.022 + 0.01 * (eye["dx"] / lay.eye_w).clamp(min=0) - eye["ye"], edge
        )
        lash_low = _soft(eye["lower"] - eye["ye"] + 0.5 * edge, edge) * _soft(eye["ye"] - eye["lower"] + 0.01, edge)
        crease_y = (lay.eye_hu + 0.035) * eye["q"]
        crease = torch.exp(-(((eye["ye"] - crease_y) / 0.01) ** 2)) * eye["q"]
        darkness = (0.85 * lash_top + 0.35 * lash_low) * outline + 0.18 * crease
        lash_rgb = _rgb(identity.hair_rgb) * 0.3 + 0.02
        colour = _mix(colour, lash_rgb, darkness.clamp(0, 1))
        return colour

    @staticmethod
    def _hair_keep(around: Tensor, y: Tensor, lay: _Layout, identity: Identity, edge: Tensor) -> Tensor:
        """Where the hair ellipsoid carries hair: above a hairline that drops from the forehead
        over the temples to the nape. around: azimuth (0 = front); y relative to the hair centre."""
        f = around.abs() / math.pi
        length = identity.hair_length.unsqueeze(1)
        front = identity.hairline.unsqueeze(1) * lay.b_up + identity.hair_part.unsqueeze(1) * 0.08 * torch.sin(around)
        side = (0.3 - 0.5 * length) * lay.b_up
        back = (0.1 - 1.5 * length) * lay.b_up

        def smooth(low: float, high: float) -> Tensor:  # smoothstep of f over [low, high]
            ramp = ((f - low) / (high - low)).clamp(0, 1)
            return ramp * ramp * (3 - 2 * ramp)

        cut = front + (side - front) * smooth(0.08, 0.42) + (back - side) * smooth(0.5, 0.85)
        return _soft(y - cut, edge)

    @staticmethod
    def _paint_hair(
        x: Tensor, y: Tensor, z: Tensor, around: Tensor, inner: bool, identity: Identity,
        r: list[list[Tensor]],
    ) -> Tensor:  # fmt: skip
        """Hair colour with strands and a highlight band; the inner (far) side is in shadow."""
        part = identity.hair_part.unsqueeze(1)
        strands = 0.5 + 0.5 * torch.sin(38 * around + 5 * torch.sin(2.5 * y + 3 * part) + 9 * part)
        base = _rgb(identity.hair_rgb) * (0.72 + 0.28 * strands).unsqueeze(1)
        if inner:
            return base * (identity.light_ambient.unsqueeze(1) * 0.7).view(-1, 1, 1)
        length = torch.sqrt(x * x + y * y + z * z) + 1e-6
        normal = SyntheticHeads._to_world([x / length, y / length, z / length], r)
        light = identity.light_direction
        lambert = (normal[0] * light[:, 0:1] + normal[1] * light[:, 1:2] + normal[2] * light[:, 2:3]).clamp(min=0)
        ambient = identity.light_ambient.unsqueeze(1)
        shade = ambient + (1 - ambient) * lambert
        highlight = 0.18 * torch.exp(-(((normal[1] - 0.55) / 0.12) ** 2)) * strands
        return base * shade.unsqueeze(1) * _rgb(identity.light_rgb) + highlight.unsqueeze(1)

    @staticmethod
    def _paint_ears(
        world_x: Tensor, world_y: Tensor, lay: _Layout, identity: Identity, motion: Motion,
        r: list[list[Tensor]], edge: Tensor,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Two flat ear discs beside the skull (drawn behind it, so only the rims show)."""
        scale = motion.scale.unsqueeze(1)
        ear_y = lay.eye_y - 0.12
        alpha = torch.zeros_like(world_x * scale)
        shade = torch.zeros_like(alpha)
        for sign in (-1.0, 1.0):
            hx = sign * lay.a * _face_width(ear_y, lay) * 0.97
            hz = -0.08 * lay.c
            cx = scale * (r[0][0] * hx + r[0][1] * ear_y + r[0][2] * hz) + motion.tx.unsqueeze(1)
            cy = scale * (r[1][0] * hx + r[1][1] * ear_y + r[1][2] * hz) + motion.ty.unsqueeze(1)
            ex_, ey_ = (world_x - cx) / scale, (world_y - cy) / scale  # head units
            d = 1 - torch.sqrt((ex_ / 0.09) ** 2 + (ey_ / 0.17) ** 2)
            ear = _soft(d * 0.09, edge)
            inner = torch.exp(-(((ex_ - sign * 0.02) / 0.04) ** 2) - (ey_ / 0.09) ** 2)
            alpha = torch.maximum(alpha, ear)
            shade = shade + ear * (0.85 - 0.3 * inner)
        ambient = identity.light_ambient.view(-1, 1, 1)
        colour = _rgb(identity.skin_rgb) * shade.unsqueeze(1) * (ambient + 0.35) * _rgb(identity.light_rgb)
        return colour, alpha

    @staticmethod
    def _paint_body(
        world_x: Tensor,
        world_y: Tensor,
        lay: _Layout,
        identity: Identity,
        motion: Motion,
        pixel: float,
    ) -> tuple[Tensor, Tensor]:
        """Neck (skin cylinder) in front of shoulders (clothes ellipse), screen space."""
        scale, tx, ty = motion.scale.unsqueeze(1), motion.tx.unsqueeze(1), motion.ty.unsqueeze(1)
        soft = 0.6 * pixel
        neck_half = 0.46 * lay.a * scale
        neck_u = (world_x - tx) / neck_half  # -1..1 across the neck
        neck = _soft((1 - neck_u.abs()) * neck_half, soft) * _soft(ty - 0.2 * scale - world_y, soft)
        light = identity.light_direction
        neck_normal_z = (1 - neck_u.clamp(-1, 1) ** 2).sqrt()
        lambert = (neck_u.clamp(-1, 1) * light[:, 0:1] + neck_normal_z * light[:, 2:3]).clamp(min=0)
        ambient = identity.light_ambient.unsqueeze(1)
        under_chin = 1 - 0.35 * torch.exp(-(((world_y - ty + lay.b_low * scale * 0.9) / (0.12 * scale)) ** 2))
        neck_shade = (ambient + (1 - ambient) * lambert) * 0.85 * under_chin
        neck_rgb = _rgb(identity.skin_rgb) * neck_shade.unsqueeze(1) * _rgb(identity.light_rgb)

        body_cx, body_cy = tx * 0.5, ty - 1.75 * scale
        bu, bv = (world_x - body_cx) / (1.75 * scale), (world_y - body_cy) / (0.8 * scale)
        body = _soft((1 - torch.sqrt(bu * bu + bv * bv)) * 0.8 * scale, soft)
        body_lambert = (bu.clamp(-1, 1) * light[:, 0:1] + bv.clamp(-1, 1) * light[:, 1:2] + 0.6 * light[:, 2:3]).clamp(min=0)
        body_rgb = _rgb(identity.clothes_rgb) * (ambient + (1 - ambient) * body_lambert).unsqueeze(1)
        colour = _mix(body_rgb, neck_rgb, neck)
        alpha = 1 - (1 - neck) * (1 - body)
        return colour, alpha

    @staticmethod
    def _paint_background(world_x: Tensor, world_y: Tensor, identity: Identity) -> Tensor:
        """Gradient, stripes or soft blobs (one-hot style per identity): B×3×N."""
        palette = identity.background_rgb  # B×3×3 (colour × rgb)
        angle = identity.background_angle.unsqueeze(1)
        along = world_x * angle.cos() + world_y * angle.sin()  # B×N
        across = -world_x * angle.sin() + world_y * angle.cos()
        gradient = _mix(palette[:, 0].unsqueeze(2), palette[:, 1].unsqueeze(2), (0.5 + 0.35 * along).clamp(0, 1))
        stripe_wave = torch.sigmoid(4 * torch.sin(identity.background_frequency.unsqueeze(1) * across))
        stripes = _mix(gradient, palette[:, 2].unsqueeze(2), 0.6 * stripe_wave)
        blobs = palette[:, 0].unsqueeze(2).expand_as(gradient)
        for k in range(3):
            centre = identity.background_blobs[:, k]  # B×3: x, y, radius
            d2 = (world_x - centre[:, 0:1]) ** 2 + (world_y - centre[:, 1:2]) ** 2
            blobs = _mix(blobs, palette[:, (k + 1) % 3].unsqueeze(2), torch.exp(-d2 / centre[:, 2:3] ** 2))
        style = identity.background_style.unsqueeze(2).unsqueeze(3)  # B×3 -> B×3×1×1
        stacked = torch.stack([gradient, stripes, blobs], dim=1)  # B×3(style)×3(rgb)×N
        vignette = 1 - 0.18 * (world_x**2 + world_y**2)
        return (stacked * style).sum(dim=1) * vignette.unsqueeze(1)


# --------------------------------------------------------------------------------------------
# Looking at it
# --------------------------------------------------------------------------------------------


def draw_landmarks(images: Tensor, landmarks: Tensor, *, colour: Sequence[float] = (0.0, 1.0, 0.2)) -> Tensor:
    """Copies of images (N×3×H×W) with each landmark (N×68×2 pixel x, y) marked by one pixel."""
    out = images.clone()
    n, _, height, width = images.shape
    cols = landmarks[..., 0].floor().long().clamp(0, width - 1)  # N×68
    rows = landmarks[..., 1].floor().long().clamp(0, height - 1)
    batch = torch.arange(n, device=images.device).unsqueeze(1).expand_as(cols)
    for channel, value in enumerate(colour):
        out[batch, channel, rows, cols] = value
    return out


def contact_sheet(images: Tensor, *, columns: int, padding: int = 2) -> Tensor:
    """Tile N×3×H×W images (in [0, 1]) into one 3×H'×W' image, row-major, white padding."""
    n, channels, height, width = images.shape
    rows = math.ceil(n / columns)
    sheet = torch.ones(channels, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for index in range(n):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        sheet[:, top : top + height, left : left + width] = images[index].detach().cpu()
    return sheet
