"""Distillation (DESIGN.md §4.3): the frozen teacher's outputs as the student's pseudo ground truth.

The student is locked to a bank of avatars; the teacher is one-shot. ``TeacherAvatars`` encodes each
avatar's source image once (v_s, e_s and the source's own motion) and then reenacts any of them with a
driver image: `megalive-train eval` benchmarks the teacher through it, and `megalive-train student
--target teacher` trains the student against it (``TeacherTargets``).

The teacher draws the foreground only (train_base.py trains it on foreground-masked targets); the
student draws whole frames. A pseudo target is therefore the teacher's foreground over the avatar's
background plate: the renderer's image of that avatar's background with the head moved out of frame
(SyntheticHeads backgrounds depend on the identity only, never on motion). Source images are the
avatars' neutral frames, as in the benchmark.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from models.blocks import resize_square
from models.checkpoints import load_base
from models.data.heads import Identity, SyntheticHeads, neutral_motion
from models.megaportraits.base import BaseModel

OUT_OF_FRAME = 6.0  # image units (the frame spans [-1, 1]): head, neck and shoulders all leave it


class TeacherAvatars:
    """A frozen base model with its sources encoded once, then driven by driver images."""

    def __init__(self, *, model: BaseModel) -> None:
        self.model = model.eval().requires_grad_(False)
        self.resolution = model.config.resolution

    @classmethod
    def from_checkpoint(cls, path: Path) -> TeacherAvatars:
        """From a `megalive-train base` checkpoint; anything else raises TrainingError (one line)."""
        return cls(model=load_base(path))

    def set_sources(self, sources: Tensor) -> None:
        """sources: A×3×r×r in [0, 1] at the teacher's resolution, one per avatar."""
        with torch.no_grad():
            self.appearance = self.model.encode_appearance(sources)
            self.source_motion = self.model.encode_motion(sources)

    def __call__(self, driver: Tensor, avatar: Tensor) -> tuple[Tensor, Tensor]:
        """driver: B×3×r×r in [0, 1]; avatar: B indices -> rgb B×3×r×r, alpha B×1×r×r."""
        with torch.no_grad():
            appearance = type(self.appearance)(*(part[avatar] for part in self.appearance))
            source_motion = type(self.source_motion)(*(part[avatar] for part in self.source_motion))
            output = self.model.render(appearance, source_motion=source_motion, driver_motion=self.model.encode_motion(driver))
        return output.rgb.clamp(0, 1), output.alpha.clamp(0, 1)


def background_plates(avatars: Identity, *, resolution: int) -> Tensor:
    """Each avatar's background alone, A×3×H×W: rendered with the head moved out of frame."""
    motion = neutral_motion(len(avatars))
    motion = dataclasses.replace(motion, tx=torch.full_like(motion.tx, OUT_OF_FRAME))
    with torch.no_grad():
        return SyntheticHeads(resolution=resolution).render(avatars, motion).rgb


class TeacherTargets:
    """Pseudo ground truth for the student at ``resolution``: the teacher's reenactment of avatar i by
    the (clean) driver, over avatar i's background plate."""

    def __init__(self, *, teacher: TeacherAvatars, avatars: Identity, resolution: int, checkpoint: Path | None = None) -> None:
        self.teacher, self.resolution, self.checkpoint = teacher, resolution, checkpoint
        with torch.no_grad():
            sources = SyntheticHeads(resolution=teacher.resolution).render(avatars, neutral_motion(len(avatars))).rgb
        teacher.set_sources(sources)
        self.plates = background_plates(avatars, resolution=resolution)  # A×3×H×W

    def __call__(self, driver: Tensor, avatar: Tensor) -> tuple[Tensor, Tensor]:
        """driver: B×3×H×W at the student's resolution -> target rgb B×3×H×W, alpha B×1×H×W."""
        rgb, alpha = self.teacher(resize_square(driver, self.teacher.resolution), avatar)
        rgb, alpha = resize_square(rgb, self.resolution), resize_square(alpha, self.resolution)
        return rgb * alpha + self.plates[avatar] * (1 - alpha), alpha

    def describe(self) -> dict[str, object]:
        """What the targets are, for the student run's config.json."""
        config = self.teacher.model.config
        return {
            "source": "teacher",
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "teacher_resolution": config.resolution,
            "volume": list(config.volume_shape),
            "composite": "teacher foreground (resized to the student's resolution) over the avatar's background plate",
        }
