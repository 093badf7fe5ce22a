"""A teacher's reenactments of an enrolled person, the second target of few-shot refinement (DESIGN §4.3: an avatar's
identity tensor is refined "against its K frames or against a teacher's reenactments").

    K frames of the person (K×3×H×W at the student's resolution H, [0, 1])
    N drivers: SyntheticHeads talking-head clip frames of other, seeded identities (rendered at the teacher's
               resolution r; landmarks known), or min(N, K) of the person's own frames
    -> the frozen teacher (a `megalive-train base` checkpoint) encodes each frame resized to r once (E_app, E_mtn) and
       draws it in every driver's motion: K·N pictures rgb K·N×3×r×r, alpha K·N×1×r×r
    -> optionally the enhancer of that teacher preset (2r), then resized to H (area when shrinking, bilinear when growing)
    -> Reenactments (models/training/refine_identity.py): the drivers at H, the pictures, their alpha, the drivers'
       landmarks at H; the student, driven by driver n, must draw frame k's reenactment

The drivers' identities are drawn from ``derived_seed(seed, "refinement-drivers", …)``, a stream no training set uses
(SyntheticHeads identities are continuous draws: another stream never repeats a face the teacher was trained on).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from models.blocks import resize_square
from models.checkpoints import BASE_KIND, ENHANCER_KIND, base_model_from_checkpoint, check_kind, load_checkpoint, state_digest
from models.data.heads import HeadMotion, SyntheticHeads, sample_clip, sample_identities
from models.data.synthetic_pairs import derived_seed
from models.megaportraits.base import BaseModel
from models.megaportraits.enhancer import Enhancer, enhancer_from_checkpoint
from models.training.common import TrainingError
from models.training.refine_identity import ReenactmentConfig, Reenactments

CLIP_FRAMES = 48  # each driver identity's talking-head clip (its frames are drawn from it)


class TeacherTarget(NamedTuple):
    """The frozen teacher and, optionally, its enhancer, with what identifies them."""

    model: BaseModel  # eval mode, requires_grad off
    preset: str
    path: str
    digest: str  # state_digest of the teacher's generator
    enhancer: Enhancer | None  # eval mode, requires_grad off
    enhancer_path: str | None
    enhancer_digest: str | None  # state_digest of the enhancer's weights
    enhancer_teacher: dict[str, Any] | None  # the teacher the enhancer was trained behind, as its checkpoint records it

    @property
    def resolution(self) -> int:
        """The side of the pictures it draws: the teacher's, doubled by an enhancer."""
        side = self.model.config.resolution
        return side if self.enhancer is None else self.enhancer.config.output_resolution

    def describe(self) -> dict[str, Any]:
        """What the refinement was fitted against, for the job's summary and --dry-run."""
        enhancer = None
        if self.enhancer is not None and self.enhancer_teacher is not None:
            enhancer = {
                "path": self.enhancer_path,
                "digest": self.enhancer_digest,
                "resolution": self.enhancer.config.output_resolution,
                "trained_behind": self.enhancer_teacher,
                "trained_behind_this_teacher": self.enhancer_teacher.get("digest") == self.digest,
            }
        return {
            "teacher": {"path": self.path, "digest": self.digest, "preset": self.preset, "resolution": self.model.config.resolution},
            "enhancer": enhancer,
        }


def load_teacher_target(*, teacher: Path, enhancer: Path | None) -> TeacherTarget:
    """A `megalive-train base` checkpoint's generator, frozen, with the enhancer of ``enhancer`` (a `megalive-train
    enhancer` checkpoint trained for that teacher preset); anything else raises TrainingError (one line)."""
    checkpoint = load_checkpoint(Path(teacher))
    check_kind(checkpoint, BASE_KIND, where=f"--teacher {teacher}")
    model = base_model_from_checkpoint(checkpoint, path=Path(teacher))
    if model.config.pose_source == "given":
        raise TrainingError(f"--teacher {teacher} reads head poses given by the caller (pose source 'given'); refinement drives by images")
    preset = str(checkpoint["train_config"]["preset"])
    loaded = None
    if enhancer is not None:
        enhancer_checkpoint = load_checkpoint(Path(enhancer))
        check_kind(enhancer_checkpoint, ENHANCER_KIND, where=f"--enhancer {enhancer}")
        loaded = enhancer_from_checkpoint(enhancer_checkpoint, path=Path(enhancer), expect_teacher_preset=preset)
        loaded.enhancer.requires_grad_(False)
    return TeacherTarget(
        model=model.eval().requires_grad_(False),
        preset=preset,
        path=str(teacher),
        digest=state_digest(checkpoint["generator"]),
        enhancer=None if loaded is None else loaded.enhancer,
        enhancer_path=None if enhancer is None else str(enhancer),
        enhancer_digest=None if loaded is None else state_digest(loaded.enhancer.state_dict()),
        enhancer_teacher=None if loaded is None else loaded.teacher,
    )


class Drivers(NamedTuple):
    teacher: Tensor  # N×3×r×r at the teacher's resolution
    student: Tensor  # N×3×H×W at the student's resolution
    landmarks: Tensor | None  # N×68×2 pixels at H, or None


def synthetic_drivers(config: ReenactmentConfig, *, resolution: int, student_resolution: int) -> Drivers:
    """``config.count`` talking-head clip frames of ``config.identities`` seeded identities, rendered at ``resolution``
    (the teacher's) and resized to ``student_resolution``; a pure function of the config."""
    identities = min(config.identities, config.count)
    per_identity = math.ceil(config.count / identities)
    heads = SyntheticHeads(resolution=resolution)
    rgb, landmarks = [], []
    for index in range(identities):
        generator = torch.Generator().manual_seed(derived_seed(config.seed, "refinement-drivers", index))
        who = sample_identities(1, generator=generator)
        clip = sample_clip(CLIP_FRAMES, generator=generator)
        picked = torch.randperm(CLIP_FRAMES, generator=generator)[: min(per_identity, CLIP_FRAMES)].sort().values
        motion: HeadMotion = clip[picked]
        for start in range(0, len(motion), config.batch_size):
            with torch.no_grad():
                render = heads.render(who, motion[start : start + config.batch_size])  # one identity broadcast over b motions
            rgb.append(render.rgb)
            landmarks.append(render.landmarks)
    teacher = torch.cat(rgb)[: config.count]  # N×3×r×r
    return Drivers(
        teacher=teacher,
        student=resize_square(teacher, student_resolution).clamp(0, 1),
        landmarks=torch.cat(landmarks)[: config.count] * (student_resolution / resolution),  # r pixels -> H pixels
    )


def frame_drivers(config: ReenactmentConfig, *, frames: Tensor, landmarks: Tensor | None, resolution: int) -> Drivers:
    """min(N, K) of the person's frames (K×3×H×W), spread evenly, resized to ``resolution`` for the teacher."""
    count = len(frames)
    picked = torch.linspace(0, count - 1, min(config.count, count)).round().long().unique()
    chosen = frames[picked]
    return Drivers(
        teacher=resize_square(chosen, resolution).clamp(0, 1),
        student=chosen,
        landmarks=None if landmarks is None else landmarks[picked],
    )


def reenact(target: TeacherTarget, *, sources: Tensor, drivers: Tensor, batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """The teacher (and its enhancer) draws each source in each driver's motion: sources K×3×r×r, drivers N×3×r×r at
    the teacher's resolution -> rgb K·N×3×R×R, alpha K·N×1×R×R in [0, 1] (R: ``target.resolution``), frame k driven by
    driver n at k·N + n. Each source is encoded once, each driver's motion once."""
    model = target.model
    side = model.config.resolution
    if sources.shape[1:] != (3, side, side) or drivers.shape[1:] != (3, side, side):
        raise ValueError(f"sources and drivers must be ·×3×{side}×{side}, got {tuple(sources.shape)} and {tuple(drivers.shape)}")
    rgb, alpha = [], []
    with torch.no_grad():
        appearance = model.encode_appearance(sources)  # v_s K×C×D×S×S, e_s K×E×k×k
        source_motion = model.encode_motion(sources)
        chunks = [model.encode_motion(drivers[start : start + batch_size]) for start in range(0, len(drivers), batch_size)]
        driver_motion = type(source_motion)(*(torch.cat(parts) for parts in zip(*chunks)))  # each field b×… -> N×…
        for k in range(len(sources)):
            for start in range(0, len(drivers), batch_size):
                count = min(batch_size, len(drivers) - start)
                own = type(appearance)(*(part[k : k + 1].expand(count, *part.shape[1:]) for part in appearance))  # 1×… -> b×…
                motion = type(source_motion)(*(part[k : k + 1].expand(count, *part.shape[1:]) for part in source_motion))
                driven = type(driver_motion)(*(part[start : start + count] for part in driver_motion))
                output = model.render(own, source_motion=motion, driver_motion=driven)
                image, mask = output.rgb.clamp(0, 1), output.alpha.clamp(0, 1)  # b×3×r×r, b×1×r×r
                if target.enhancer is not None:
                    enhanced = target.enhancer(image, mask)
                    image, mask = enhanced.rgb.clamp(0, 1), enhanced.alpha.clamp(0, 1)  # b×3×2r×2r, b×1×2r×2r
                rgb.append(image)
                alpha.append(mask)
    return torch.cat(rgb), torch.cat(alpha)


def teacher_reenactments(target: TeacherTarget, *, frames: Tensor, landmarks: Tensor | None, config: ReenactmentConfig) -> Reenactments:
    """The teacher's reenactments of ``frames`` (K×3×H×W, the student's resolution) with ``landmarks`` (K×68×2 pixels,
    or None: used when the person's own frames drive), resized to H; see the module docstring."""
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[2] != frames.shape[3] or not len(frames):
        raise ValueError(f"frames must be K×3×H×H with K ≥ 1, got {tuple(frames.shape)}")
    side, student_side = target.model.config.resolution, frames.shape[-1]
    if config.drivers == "synthetic":
        drivers = synthetic_drivers(config, resolution=side, student_resolution=student_side)
    else:
        drivers = frame_drivers(config, frames=frames, landmarks=landmarks, resolution=side)
    sources = resize_square(frames, side).clamp(0, 1)  # K×3×H×H -> K×3×r×r
    rgb, alpha = reenact(target, sources=sources, drivers=drivers.teacher, batch_size=config.batch_size)  # K·N×·×R×R
    count, drivers_count = len(frames), len(drivers.student)
    return Reenactments(
        drivers=drivers.student.repeat(count, 1, 1, 1),  # N×3×H×H -> K·N×3×H×H (driver n at k·N + n)
        targets=resize_square(rgb, student_side).clamp(0, 1),  # K·N×3×R×R -> K·N×3×H×H
        masks=resize_square(alpha, student_side).clamp(0, 1),
        landmarks=None if drivers.landmarks is None else drivers.landmarks.repeat(count, 1, 1),  # N×68×2 -> K·N×68×2
        sources=torch.arange(count).repeat_interleave(drivers_count),
        driver_index=torch.arange(drivers_count).repeat(count),
    )


def describe_reenactments(config: ReenactmentConfig, reenactments: Reenactments | None = None) -> dict[str, Any]:
    """The reenactments' settings (and, once made, how many), for the job's summary and --dry-run."""
    described: dict[str, Any] = {"drivers": config.drivers, "reenactments": config.count, "seed": config.seed}
    if config.drivers == "synthetic":
        described["driver_identities"] = min(config.identities, config.count)
        described["driver_source"] = "SyntheticHeads talking-head clip frames, rendered at the teacher's resolution"
    else:
        described["driver_source"] = "the person's own frames"
    if reenactments is not None:
        described["pictures"] = len(reenactments.targets)
        described["drivers_used"] = int(reenactments.driver_index.max()) + 1
    return described
