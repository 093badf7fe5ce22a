"""Samples for meta-learning enrollment (the identity embedder with the student, DESIGN §4.3), rendered on the fly by
SyntheticHeads: a new identity each sample, as a user's portrait is a face the model never saw.

    identity A (new):   frames = K pictures of A: frame 0 a portrait (frontal within a few degrees, neutral), the
                        others frames of a talking-head clip of A (what a short video of the user gives)
    identity B ≠ A:     driver = B in motion m (an independent random pose and expression, or a clip frame)
    target = render(A, m), with its alpha and 68 landmarks: A doing what B does (cross-reenactment ground truth)

Every sample is a pure function of (seed, index), so DataLoader workers and a resumed run draw the same data, and a
held-out set is another seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from models.data.heads import HeadMotion, SyntheticHeads, neutral_motion, sample_clip, sample_identities, sample_motion_pool
from models.data.synthetic_pairs import derived_seed

PORTRAIT_POSE_JITTER = 0.08  # radians: how far from frontal a portrait is drawn
CLIP_FRAMES = 48  # the clip the other frames come from


class EnrollmentSample(NamedTuple):
    """One sample (a DataLoader batches each field). Images in [0, 1]."""

    frames: Tensor  # K×3×H×W: the new identity's portrait, then clip frames
    driver: Tensor  # 3×H×W: another identity
    target_rgb: Tensor  # 3×H×W: the new identity in the driver's motion
    target_alpha: Tensor  # 1×H×W
    target_landmarks: Tensor  # 68×2 pixels (pixel i spans [i, i+1))


@dataclass(frozen=True)
class EnrollmentSamplesConfig:
    resolution: int
    shots: int  # K frames per sample
    seed: int = 0
    length: int = 1_000_000  # samples per epoch (each index a different draw)
    driver_clip_share: float = 0.5  # of the drivers' motions, the share that are talking-head clip frames

    def __post_init__(self) -> None:
        if self.shots < 1 or self.length < 1:
            raise ValueError(f"enrollment samples need shots ≥ 1 and length ≥ 1, got {self.shots} and {self.length}")
        if not 0 <= self.driver_clip_share <= 1:
            raise ValueError(f"driver_clip_share must be in [0, 1], got {self.driver_clip_share}")


def portrait_motion(count: int, *, generator: torch.Generator) -> HeadMotion:
    """``count`` portrait poses: neutral, frontal within PORTRAIT_POSE_JITTER radians, centred at the default size."""
    motion = neutral_motion(count)
    yaw, pitch, roll = ((torch.rand(3, count, generator=generator) * 2 - 1) * PORTRAIT_POSE_JITTER).unbind(0)
    return HeadMotion(yaw=yaw, pitch=pitch, roll=roll, tx=motion.tx, ty=motion.ty, scale=motion.scale, expression=motion.expression)


class EnrollmentSamples(Dataset[EnrollmentSample]):
    """``dataset[index]``: one EnrollmentSample (K + 2 heads in one render) on the CPU."""

    def __init__(self, *, config: EnrollmentSamplesConfig) -> None:
        self.config = config
        self.heads = SyntheticHeads(resolution=config.resolution)

    def __len__(self) -> int:
        return self.config.length

    def __getitem__(self, index: int) -> EnrollmentSample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        config = self.config
        generator = torch.Generator().manual_seed(derived_seed(config.seed, "enrollment", index))
        new, other = sample_identities(2, generator=generator)[[0]], sample_identities(1, generator=generator)
        frames = [portrait_motion(1, generator=generator)]
        if config.shots > 1:
            clip = sample_clip(CLIP_FRAMES, generator=generator)
            frames.append(clip[torch.randperm(CLIP_FRAMES, generator=generator)[: config.shots - 1]])
        driven = sample_motion_pool(1, clip_share=float(torch.rand(1, generator=generator) < config.driver_clip_share), generator=generator)
        who = [new] * config.shots + [other, new]
        motions = HeadMotion.cat([*frames, driven, driven])
        renders = self.heads.render(type(new).cat(who), motions)  # (K + 2) heads: frames, driver, target
        shots = config.shots
        return EnrollmentSample(
            frames=renders.rgb[:shots],
            driver=renders.rgb[shots],
            target_rgb=renders.rgb[shots + 1],
            target_alpha=renders.alpha[shots + 1],
            target_landmarks=renders.landmarks[shots + 1],
        )

    def describe(self) -> dict[str, object]:
        """What the data is, for the run's config.json."""
        config = self.config
        return {
            "source": "synthetic",
            "renderer": "SyntheticHeads",
            "resolution": config.resolution,
            "shots": config.shots,
            "seed": config.seed,
            "samples": "a new identity per sample: a portrait (frontal within "
            f"{PORTRAIT_POSE_JITTER} rad, neutral) and {config.shots - 1} frames of a clip of it; a driver of another identity "
            f"(random motion, or a clip frame for {config.driver_clip_share:.0%}); the target: the new identity in the driver's motion",
        }
