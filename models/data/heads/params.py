"""Head parameters: who a head is (``Identity``) and how it moves (``HeadMotion``), and their sampling.

Both are frozen dataclasses of tensors whose first dimension is the batch. ``HeadMotion.expression``
is B×52 in ARKit blendshape order (the names come from ``contract.arkit``); ``with_controls`` sets
ARKit-named controls, ``arkit_curves`` gives the 61 wire curves. Sampling: random identities,
random motions, and smooth talking-head clips, all from a ``torch.Generator`` (same state, same
parameters).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# HeadMotion.expression is B×52 in ARKIT_BLENDSHAPES order; performance capture speaks in Live Link Face's 61 curves
# (ARKIT_CURVES: the 52 blendshapes, then head and eye rotations in radians), the wire protocol's `arkit` frame.
# ARKIT_INDEX gives a blendshape's column in HeadMotion.expression.
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
class HeadMotion(_TensorBatch):
    """How the head moves: rigid pose and ARKit expression (values in [0, 1])."""

    yaw: Tensor  # B, radians
    pitch: Tensor  # B, radians
    roll: Tensor  # B, radians
    tx: Tensor  # B, image units (image spans [-1, 1])
    ty: Tensor  # B, image units, up is positive
    scale: Tensor  # B
    expression: Tensor  # B×52, ARKIT_BLENDSHAPES order

    def with_controls(self, controls: Mapping[str, float | Tensor]) -> HeadMotion:
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
    ) -> HeadMotion:
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

    def centred(self) -> HeadMotion:
        """A copy without translation, at the default scale: the head as ARKit curves alone place it."""
        zeros = torch.zeros_like(self.tx)
        return dataclasses.replace(self, tx=zeros, ty=zeros, scale=torch.full_like(self.scale, DEFAULT_SCALE))

    def framing(self) -> Tensor:
        """B×3: head translation and scale offset (tx, ty, scale - DEFAULT_SCALE), which ARKit lacks."""
        return torch.stack([self.tx, self.ty, self.scale - DEFAULT_SCALE], dim=1)


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


def neutral_motion(n: int) -> HeadMotion:
    """Frontal, centred, default scale, all expression controls at 0."""
    zeros = torch.zeros(n)
    return HeadMotion(
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


def sample_motions(n: int, *, generator: torch.Generator) -> HeadMotion:
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
    return HeadMotion(
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


def sample_clip(num_frames: int, *, generator: torch.Generator, fps: float = 25.0) -> HeadMotion:
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
    return HeadMotion(
        yaw=(0.22 * pose[0]).clamp(-0.5, 0.5),
        pitch=(0.1 * pose[1] + 0.05 * syllables[0] * speaking).clamp(-0.35, 0.35),  # nods
        roll=(0.07 * pose[2]).clamp(-0.25, 0.25),
        tx=(0.025 * pose[3]).clamp(-0.08, 0.08),
        ty=(0.02 * pose[4]).clamp(-0.08, 0.08),
        scale=DEFAULT_SCALE + (0.015 * pose[5]).clamp(-0.05, 0.05),
        expression=expression,
    )


CLIP_FRAMES = 64  # frames per clip when a set of clip frames is drawn (sample_clip_frames)


def sample_clip_frames(count: int, *, generator: torch.Generator) -> HeadMotion:
    """``count`` frames of talking-head clips of CLIP_FRAMES frames each, the last clip cut short."""
    clips = [sample_clip(CLIP_FRAMES, generator=generator) for _ in range(math.ceil(count / CLIP_FRAMES))]
    return HeadMotion.cat(clips)[:count]


def sample_motion_pool(count: int, *, clip_share: float, generator: torch.Generator) -> HeadMotion:
    """``count`` motions: independent random ones, then ``clip_share`` of them frames of talking-head clips (the clips
    are drawn from the generator first)."""
    clip_count = round(count * clip_share)
    clip_frames = sample_clip_frames(clip_count, generator=generator) if clip_count else None
    random = sample_motions(count - clip_count, generator=generator)
    return random if clip_frames is None else HeadMotion.cat([random, clip_frames])


def control_weights(undrawn_weight: float) -> Tensor:
    """52 weights in ARKit blendshape order: 1 for the controls the renderer draws (MODELLED_BLENDSHAPES),
    ``undrawn_weight`` for the others, which no picture or landmark shows."""
    return torch.tensor([1.0 if name in MODELLED_BLENDSHAPES else undrawn_weight for name in ARKIT_BLENDSHAPES])
