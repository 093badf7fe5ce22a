"""Few-shot refinement of an enrolled avatar (DESIGN §4.3; the few-shot talking-heads paper's fine-tuning, restricted as
MegaPortraits' student allows: all identity lives in the identity tensor, so only that tensor is fitted).

Two targets, alone or together:

    frames        K frames of the person (aligned crops, K×3×H×W in [0, 1]): frame j drives the frozen student with the
                  identity tensor and is its own target (self-reenactment)
    reenactments  M = K·N teacher reenactments (``Reenactments``, made by models/training/teacher_reenactments.py): the
                  teacher drew frame k driven by driver n; driver n drives the student, which must draw that picture.
                  The teacher draws the foreground only, so this term is weighted by the teacher's alpha

    each step: up to ``frames_per_step`` frames and up to ``reenactments_per_step`` reenactments
    -> loss = frames_weight · [L1 (eyes and mouth weighted 1 + region, when the landmarks are known) + perceptual]
            + reenactment_weight · [the same on the teacher's foreground (eyes and mouth at the driver's landmarks)]
            + anchor · mean squared distance to the embedder's tensor (the targets alone do not pin it down)
       (perceptual: EfficientNet-Lite0, when its weights are installed)
    -> Adam on the identity tensor only

The student's encoder and decoder do not move (their parameters never reach the optimiser), so the shipped avatars and
every other enrolled avatar draw exactly as before. ``on_step`` is called after every step with its loss and may stop
the fit early (a cancelled job): the result then holds the tensor as it was after the last finished step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from models.face_regions import region_masks
from models.losses import foreground, masked_l1
from models.megaportraits.student import Student
from models.nets.perceptual import PerceptualFeatures
from models.training.student_objective import region_weighted_l1


@dataclass(frozen=True)
class RefineConfig:
    steps: int = 120
    learning_rate: float = 0.03  # Adam on the identity tensor (entries of order 1)
    frames_per_step: int = 8  # frames driven per step (all of them when there are fewer)
    region_weight: float = 4.0  # extra L1 weight inside the eye and mouth boxes (as the student's objective)
    perceptual_weight: float = 1.0  # 0: L1 only
    anchor_weight: float = 0.01  # pull towards the embedder's tensor
    seed: int = 0
    frames_weight: float = 1.0  # the K frames self-driven (0: the reenactments alone)
    reenactment_weight: float = 1.0  # the teacher's reenactments, when there are any
    reenactments_per_step: int = 8  # reenactments driven per step (all of them when there are fewer)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.frames_per_step < 1 or self.reenactments_per_step < 1:
            raise ValueError(
                f"refinement needs steps ≥ 1, frames_per_step ≥ 1 and reenactments_per_step ≥ 1, got {self.steps}, "
                f"{self.frames_per_step} and {self.reenactments_per_step}"
            )
        weights = (self.region_weight, self.perceptual_weight, self.anchor_weight, self.frames_weight, self.reenactment_weight)
        if self.learning_rate <= 0 or min(weights) < 0:
            raise ValueError("the learning rate must be positive and the loss weights non-negative")


DriverKind = Literal["synthetic", "frames"]
DRIVER_KINDS: tuple[DriverKind, ...] = ("synthetic", "frames")


@dataclass(frozen=True)
class ReenactmentConfig:
    """How a teacher's reenactments are made (models/training/teacher_reenactments.py makes them); kept beside
    RefineConfig so that building `megalive-train`'s options does not import the teacher, the enhancer or the renderer."""

    count: int = 16  # N drivers (with drivers "frames": at most K, spread evenly over the frames)
    drivers: DriverKind = "synthetic"
    identities: int = 4  # synthetic drivers: how many identities the N frames are shared among
    seed: int = 0
    batch_size: int = 8  # teacher renders per call

    def __post_init__(self) -> None:
        if self.count < 1 or self.identities < 1 or self.batch_size < 1:
            raise ValueError(
                f"reenactments need count ≥ 1, identities ≥ 1 and batch_size ≥ 1, got {self.count}, {self.identities} and {self.batch_size}"
            )
        if self.drivers not in DRIVER_KINDS:
            raise ValueError(f"drivers must be one of {', '.join(DRIVER_KINDS)}, got {self.drivers!r}")


class Reenactments(NamedTuple):
    """A teacher's reenactments of the person, at the student's resolution (M = K·N: frame k driven by driver n at
    m = k·N + n)."""

    drivers: Tensor  # M×3×H×W in [0, 1]: what drives the student
    targets: Tensor  # M×3×H×W in [0, 1]: the teacher's picture (enhanced, when an enhancer was given)
    masks: Tensor  # M×1×H×W in [0, 1]: the teacher's alpha (its foreground; its rgb means nothing elsewhere)
    landmarks: Tensor | None  # M×68×2 pixels: the driver's landmarks (the reenactment takes its pose), or None
    sources: Tensor  # M long: which of the K frames was the teacher's source
    driver_index: Tensor  # M long: which of the N drivers


class RefineResult(NamedTuple):
    identity: Tensor  # C_id×S×S, detached
    steps: int  # steps finished
    cancelled: bool  # on_step stopped it before config.steps
    first_loss: float
    last_loss: float


StepCallback = Callable[[int, float], bool]  # (steps finished, that step's loss) -> go on


def _check_reenactments(reenactments: Reenactments, *, resolution: int) -> None:
    count = len(reenactments.drivers)
    image = (count, 3, resolution, resolution)
    if not count or reenactments.drivers.shape != image or reenactments.targets.shape != image:
        raise ValueError(
            f"reenactment drivers and targets must be M×3×{resolution}×{resolution} with M ≥ 1, got "
            f"{tuple(reenactments.drivers.shape)} and {tuple(reenactments.targets.shape)}"
        )
    if reenactments.masks.shape != (count, 1, resolution, resolution):
        raise ValueError(f"reenactment masks must be {count}×1×{resolution}×{resolution}, got {tuple(reenactments.masks.shape)}")
    if reenactments.landmarks is not None and reenactments.landmarks.shape != (count, 68, 2):
        raise ValueError(f"reenactment landmarks must be {count}×68×2, got {tuple(reenactments.landmarks.shape)}")


def _pick(count: int, limit: int, generator: torch.Generator) -> Tensor:
    return torch.randperm(count, generator=generator)[:limit] if count > limit else torch.arange(count)


def _drive(student: Student, driver: Tensor, identity: Tensor) -> Tensor:
    rgb, _ = student.drive(driver, identity[None].expand(len(driver), *identity.shape))  # C×S×S -> b×C×S×S
    return rgb


def refine_identity(
    student: Student,
    *,
    identity: Tensor,
    frames: Tensor,
    landmarks: Tensor | None,
    config: RefineConfig,
    perceptual: PerceptualFeatures | None,
    on_step: StepCallback | None = None,
    reenactments: Reenactments | None = None,
) -> RefineResult:
    """Fit ``identity`` (C_id×S×S) to ``frames`` (K×3×H×W) with ``landmarks`` (K×68×2 pixels, or None) and, when given,
    to a teacher's ``reenactments``; see the module docstring."""
    resolution = student.config.resolution
    if frames.ndim != 4 or frames.shape[1:] != (3, resolution, resolution):
        raise ValueError(f"frames must be K×3×{resolution}×{resolution}, got {tuple(frames.shape)}")
    if identity.shape != student.identity.shape[1:]:
        raise ValueError(f"identity must be {tuple(student.identity.shape[1:])}, got {tuple(identity.shape)}")
    if landmarks is not None and landmarks.shape != (len(frames), 68, 2):
        raise ValueError(f"landmarks must be {len(frames)}×68×2, got {tuple(landmarks.shape)}")
    if reenactments is not None:
        _check_reenactments(reenactments, resolution=resolution)
    if not config.frames_weight and (reenactments is None or not config.reenactment_weight):
        raise ValueError("nothing to fit: the frames' weight is 0 and there are no reenactments weighted above 0")
    student.eval().requires_grad_(False)
    if perceptual is not None:
        perceptual.eval().requires_grad_(False)
    use_perceptual = perceptual is not None and config.perceptual_weight > 0
    anchor = identity.detach().clone()
    fitted = nn.Parameter(anchor.clone())
    optimiser = torch.optim.Adam([fitted], lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    first_loss = last_loss = float("nan")
    finished = 0
    for step in range(config.steps):
        loss = config.anchor_weight * (fitted - anchor).square().mean()
        if config.frames_weight:
            picked = _pick(len(frames), config.frames_per_step, generator)
            driver = frames[picked]  # b×3×H×W: each frame drives, and is the target
            rgb = _drive(student, driver, fitted)
            if landmarks is None:
                term = (rgb - driver).abs().mean()
            else:
                term = region_weighted_l1(rgb, driver, landmarks[picked], region_weight=config.region_weight)
            if use_perceptual:
                term = term + config.perceptual_weight * perceptual.perceptual_distance(rgb, driver).mean()
            loss = loss + config.frames_weight * term
        if reenactments is not None and config.reenactment_weight:
            picked = _pick(len(reenactments.drivers), config.reenactments_per_step, generator)
            target, mask = reenactments.targets[picked], reenactments.masks[picked]  # b×3×H×W, b×1×H×W
            rgb = _drive(student, reenactments.drivers[picked], fitted)
            weight = mask
            if reenactments.landmarks is not None and config.region_weight:
                regions = region_masks(reenactments.landmarks[picked], size=resolution).amax(dim=1, keepdim=True)  # b×R×H×W -> b×1×H×W
                weight = mask * (1 + config.region_weight * regions)
            term = masked_l1(rgb, target, weight)
            if use_perceptual:
                distance = perceptual.perceptual_distance(foreground(rgb, mask), foreground(target, mask))  # b
                term = term + config.perceptual_weight * distance.mean()
            loss = loss + config.reenactment_weight * term
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        finished = step + 1
        last_loss = float(loss.detach())
        if step == 0:
            first_loss = last_loss
        if on_step is not None and not on_step(finished, last_loss) and finished < config.steps:
            return RefineResult(
                identity=fitted.detach().clone(), steps=finished, cancelled=True, first_loss=first_loss, last_loss=last_loss
            )
    return RefineResult(identity=fitted.detach().clone(), steps=finished, cancelled=False, first_loss=first_loss, last_loss=last_loss)
