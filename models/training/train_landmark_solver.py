"""`megalive-train landmark-solver`: train the landmark solver (models/megaportraits/puppet.py) on the renderer's
exact landmark / parameter pairs.

Each step draws random identities and, from a pool of motions (independent random motions and, ``clip_share`` of
them, frames of talking-head clips), the motions they wear; the renderer's 68 landmarks of each (no pixels drawn:
``SyntheticHeads.landmarks``), with a little noise, are the input, and the motion is the answer:

    blendshapes  squared error (× BLENDSHAPE_SCALE) on the controls the renderer draws (MODELLED_BLENDSHAPES); the
                 others, which no landmark shows, weigh ``undrawn_weight``
    head angles  L1 on yaw, pitch, roll in radians (× ``pose_weight``)
    framing      L1 on tx, ty and the scale offset (× ``framing_weight``)

The checkpoint (kind "landmark solver") holds its held-out RMS errors on fresh identities in clip frames, beside the
errors of answering zero and the pool's mean for every output.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from contract.arkit import ARKIT_BLENDSHAPES, NUM_BLENDSHAPES
from models.checkpoints import LANDMARK_SOLVER_KIND, save_checkpoint
from models.data.heads import (
    MODELLED_BLENDSHAPES,
    HeadMotion,
    SyntheticHeads,
    control_weights,
    sample_clip_frames,
    sample_identities,
    sample_motion_pool,
)
from models.data.synthetic_pairs import derived_seed
from models.megaportraits.puppet import NUM_HEAD_ANGLES, LandmarkSolver, LandmarkSolverConfig
from models.training.common import TrainingError, adam_with_cosine

LANDMARK_RESOLUTION = 256  # the pixel grid the renderer projects onto; landmarks are divided by it to crop units
# Squared error on the blendshapes (the conditional mean: most controls are 0 most of the time, and an absolute error's
# median answer would be 0 everywhere), scaled to weigh like the absolute errors of the pose and framing.
BLENDSHAPE_SCALE = 10.0


@dataclass(frozen=True)
class LandmarkSolverTrainConfig:
    out: str  # checkpoint path
    motions: int = 40000  # the motion pool
    clip_share: float = 0.5  # of the pool, the share that are frames of talking-head clips (sample_clip)
    steps: int = 6000
    batch_size: int = 256
    learning_rate: float = 1e-3
    landmark_noise: float = 0.002  # σ of noise on every point, in crop units (0.5 px at 256)
    pose_weight: float = 1.0
    framing_weight: float = 1.0
    undrawn_weight: float = 0.1
    seed: int = 11  # neither the student's data seed nor the benchmark's held-out one
    held_out: int = 2048  # fresh identities in fresh clip frames, measured after training
    command: str = ""


@dataclass(frozen=True)
class SolverErrors:
    """Root-mean-square errors on held-out landmark sets, the blendshapes' beside answering zero (what a reader that
    sees nothing says) and the pool's mean."""

    blendshapes: float  # over the controls the renderer draws
    blendshapes_zero_answer: float
    blendshapes_mean_answer: float
    eyes_and_mouth: float  # the blink, jaw and mouth controls alone
    eyes_and_mouth_zero_answer: float
    eyes_and_mouth_mean_answer: float
    rotation_deg: float
    rotation_mean_answer_deg: float
    framing: float
    framing_mean_answer: float


EYE_AND_MOUTH = tuple(name for name in MODELLED_BLENDSHAPES if name.startswith(("eyeBlink", "jaw", "mouth")))


@dataclass(frozen=True)
class SolverSummary:
    path: Path
    steps: int
    final_loss: float
    seconds: float
    held_out: SolverErrors

    def describe(self) -> str:
        e = self.held_out
        return (
            f"trained the landmark solver ({self.steps} steps, {self.seconds / 60:.1f} min) -> {self.path}; RMS errors on held-out clip "
            f"frames of new identities: blendshapes {e.blendshapes:.4f} (answering zero: {e.blendshapes_zero_answer:.4f}, the mean: "
            f"{e.blendshapes_mean_answer:.4f}), eyes and mouth {e.eyes_and_mouth:.4f} ({e.eyes_and_mouth_zero_answer:.4f}, "
            f"{e.eyes_and_mouth_mean_answer:.4f}), head rotation {e.rotation_deg:.2f}° (the mean: {e.rotation_mean_answer_deg:.2f}°), "
            f"framing {e.framing:.4f} ({e.framing_mean_answer:.4f})"
        )


def solver_targets(motion: HeadMotion) -> tuple[Tensor, Tensor, Tensor]:
    """What the solver answers for a motion: blendshapes B×52, head angles B×3, framing B×3."""
    return motion.expression, torch.stack([motion.yaw, motion.pitch, motion.roll], dim=1), motion.framing()


def solver_inputs(heads: SyntheticHeads, motion: HeadMotion, *, generator: torch.Generator, noise: float) -> Tensor:
    """Random identities wearing ``motion`` -> their 68 landmarks in crop units (+ noise): B×68×2."""
    identities = sample_identities(len(motion), generator=generator)
    landmarks = heads.landmarks(identities, motion) / heads.resolution  # B×68×2 pixels -> [0, 1]
    return landmarks + noise * torch.randn(landmarks.shape, generator=generator)


def held_out_solver_errors(solver: LandmarkSolver, pool: HeadMotion, *, seed: int, count: int) -> SolverErrors:
    generator = torch.Generator().manual_seed(seed)
    motion = sample_clip_frames(count, generator=generator)
    heads = SyntheticHeads(resolution=LANDMARK_RESOLUTION)
    with torch.inference_mode():
        solved = solver(solver_inputs(heads, motion, generator=generator, noise=0.0))
    blendshapes, angles, framing = solver_targets(motion)
    mean_blendshapes, mean_angles, mean_framing = (part.mean(dim=0, keepdim=True) for part in solver_targets(pool))
    drawn = control_weights(0.0) > 0
    eye_mouth = torch.tensor([name in EYE_AND_MOUTH for name in ARKIT_BLENDSHAPES])
    guess_blendshapes = solved.curves[:, :NUM_BLENDSHAPES]
    guess_angles = solved.curves[:, NUM_BLENDSHAPES : NUM_BLENDSHAPES + NUM_HEAD_ANGLES]

    def error(guess: Tensor, truth: Tensor, columns: Tensor | None = None) -> float:
        difference = (guess - truth).square()
        return float((difference if columns is None else difference[:, columns]).mean().sqrt())

    zero = torch.zeros_like(blendshapes)
    return SolverErrors(
        blendshapes=error(guess_blendshapes, blendshapes, drawn),
        blendshapes_zero_answer=error(zero, blendshapes, drawn),
        blendshapes_mean_answer=error(mean_blendshapes, blendshapes, drawn),
        eyes_and_mouth=error(guess_blendshapes, blendshapes, eye_mouth),
        eyes_and_mouth_zero_answer=error(zero, blendshapes, eye_mouth),
        eyes_and_mouth_mean_answer=error(mean_blendshapes, blendshapes, eye_mouth),
        rotation_deg=math.degrees(error(guess_angles, angles)),
        rotation_mean_answer_deg=math.degrees(error(mean_angles, angles)),
        framing=error(solved.framing, framing),
        framing_mean_answer=error(mean_framing, framing),
    )


def check_solver_config(config: LandmarkSolverTrainConfig) -> None:
    if config.steps < 1 or config.batch_size < 1 or config.motions < config.batch_size or config.held_out < 1:
        raise TrainingError("the landmark solver needs --steps ≥ 1, --batch ≥ 1, --motions ≥ --batch and held_out ≥ 1")
    if not 0 <= config.clip_share <= 1 or min(config.pose_weight, config.framing_weight, config.undrawn_weight, config.landmark_noise) < 0:
        raise TrainingError("the landmark solver needs clip_share in [0, 1] and weights and noise ≥ 0")


def train_landmark_solver(
    config: LandmarkSolverTrainConfig, *, solver_config: LandmarkSolverConfig | None = None, progress: bool = True
) -> SolverSummary:
    check_solver_config(config)
    solver_config = solver_config or LandmarkSolverConfig()
    began = time.perf_counter()
    torch.manual_seed(derived_seed(config.seed, "weights"))
    solver = LandmarkSolver(config=solver_config)
    pool = sample_motion_pool(
        config.motions, clip_share=config.clip_share, generator=torch.Generator().manual_seed(derived_seed(config.seed, "motions"))
    )
    heads = SyntheticHeads(resolution=LANDMARK_RESOLUTION)
    weights = control_weights(config.undrawn_weight)
    optimiser, scheduler = adam_with_cosine(
        solver.parameters(), learning_rate=config.learning_rate, final_learning_rate=config.learning_rate / 100, steps=config.steps
    )
    generator = torch.Generator().manual_seed(derived_seed(config.seed, "batches"))
    loss = torch.tensor(math.nan)
    solver.train()
    for _ in tqdm(range(config.steps), desc="landmark solver", unit="step", disable=not progress):
        motion = pool[torch.randint(config.motions, (config.batch_size,), generator=generator)]
        with torch.no_grad():
            landmarks = solver_inputs(heads, motion, generator=generator, noise=config.landmark_noise)
        solved = solver(landmarks)
        blendshapes, angles, framing = solver_targets(motion)
        loss = (
            ((solved.curves[:, :NUM_BLENDSHAPES] - blendshapes).square() * weights).mean() * BLENDSHAPE_SCALE
            + config.pose_weight * (solved.curves[:, NUM_BLENDSHAPES : NUM_BLENDSHAPES + NUM_HEAD_ANGLES] - angles).abs().mean()
            + config.framing_weight * (solved.framing - framing).abs().mean()
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
    solver.eval()
    held_out = held_out_solver_errors(solver, pool, seed=derived_seed(config.seed, "held-out"), count=config.held_out)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        {
            "model": solver.state_dict(),
            "model_config": asdict(solver_config),
            "train_config": asdict(config),
            "held_out": asdict(held_out),
        },
        out,
        kind=LANDMARK_SOLVER_KIND,
    )
    return SolverSummary(
        path=out, steps=config.steps, final_loss=float(loss.detach()), seconds=time.perf_counter() - began, held_out=held_out
    )
