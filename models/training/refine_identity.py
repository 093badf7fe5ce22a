"""Few-shot refinement of an enrolled avatar (DESIGN §4.3; the few-shot talking-heads paper's fine-tuning, restricted as
MegaPortraits' student allows: all identity lives in the identity tensor, so only that tensor is fitted).

    K frames of the person (aligned crops, K×3×H×W in [0, 1]), their identity tensor from the embedder (C_id×S×S)
    -> each step: up to ``frames_per_step`` of the frames drive the frozen student with the identity tensor
       (self-reenactment: frame j drives, frame j is the target)
    -> loss = L1 (eyes and mouth weighted 1 + region, when the frames' landmarks are known)
              + perceptual (EfficientNet-Lite0, when its weights are installed)
              + anchor · mean squared distance to the embedder's tensor (the K frames alone do not pin it down)
    -> Adam on the identity tensor only

The student's encoder and decoder do not move (their parameters never reach the optimiser), so the shipped avatars and
every other enrolled avatar draw exactly as before. ``on_step`` is called after every step with its loss and may stop
the fit early (a cancelled job): the result then holds the tensor as it was after the last finished step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

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

    def __post_init__(self) -> None:
        if self.steps < 1 or self.frames_per_step < 1:
            raise ValueError(f"refinement needs steps ≥ 1 and frames_per_step ≥ 1, got {self.steps} and {self.frames_per_step}")
        if self.learning_rate <= 0 or min(self.region_weight, self.perceptual_weight, self.anchor_weight) < 0:
            raise ValueError("the learning rate must be positive and the loss weights non-negative")


class RefineResult(NamedTuple):
    identity: Tensor  # C_id×S×S, detached
    steps: int  # steps finished
    cancelled: bool  # on_step stopped it before config.steps
    first_loss: float
    last_loss: float


StepCallback = Callable[[int, float], bool]  # (steps finished, that step's loss) -> go on


def refine_identity(
    student: Student,
    *,
    identity: Tensor,
    frames: Tensor,
    landmarks: Tensor | None,
    config: RefineConfig,
    perceptual: PerceptualFeatures | None,
    on_step: StepCallback | None = None,
) -> RefineResult:
    """Fit ``identity`` (C_id×S×S) to ``frames`` (K×3×H×W) with ``landmarks`` (K×68×2 pixels, or None); see the module
    docstring."""
    if frames.ndim != 4 or frames.shape[1:] != (3, student.config.resolution, student.config.resolution):
        raise ValueError(f"frames must be K×3×{student.config.resolution}×{student.config.resolution}, got {tuple(frames.shape)}")
    if identity.shape != student.identity.shape[1:]:
        raise ValueError(f"identity must be {tuple(student.identity.shape[1:])}, got {tuple(identity.shape)}")
    if landmarks is not None and landmarks.shape != (len(frames), 68, 2):
        raise ValueError(f"landmarks must be {len(frames)}×68×2, got {tuple(landmarks.shape)}")
    student.eval().requires_grad_(False)
    if perceptual is not None:
        perceptual.eval().requires_grad_(False)
    anchor = identity.detach().clone()
    fitted = nn.Parameter(anchor.clone())
    optimiser = torch.optim.Adam([fitted], lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    count = len(frames)
    first_loss = last_loss = float("nan")
    finished = 0
    for step in range(config.steps):
        picked = (
            torch.randperm(count, generator=generator)[: config.frames_per_step] if count > config.frames_per_step else torch.arange(count)
        )
        driver = frames[picked]  # b×3×H×W: each frame drives, and is the target
        rgb, _ = student.drive(driver, fitted[None].expand(len(picked), *fitted.shape))  # C×S×S -> b×C×S×S
        if landmarks is None:
            loss = (rgb - driver).abs().mean()
        else:
            loss = region_weighted_l1(rgb, driver, landmarks[picked], region_weight=config.region_weight)
        if perceptual is not None and config.perceptual_weight:
            loss = loss + config.perceptual_weight * perceptual.perceptual_distance(rgb, driver).mean()
        loss = loss + config.anchor_weight * (fitted - anchor).square().mean()
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
