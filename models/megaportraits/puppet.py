"""Capture drivers through a puppet (DESIGN §4.5): the capture signal is drawn as a face, and the student reads
that picture with its own image encoder, so ARKit curves and landmarks reach the decoder in the domain it was
trained on (driver pictures of the SyntheticHeads renderer), not as a regressed feature map.

    arkit      B×61 curves     --------------------------> Puppet -> B×3×H×W -> Student(driver, avatar) -> rgb, alpha
    landmarks  B×68×2 in [0,1] -> LandmarkSolver -> curves, framing -^

- ``Puppet``: the SyntheticHeads renderer with one fixed identity (``puppet_identity``), posed by the wire's
  curves: the 52 blendshapes and the head's yaw/pitch/roll in radians (the six eye rotations are accepted and
  not used: the renderer's gaze is the eyeLook* blendshapes). ARKit carries no head translation or scale, so
  the head is centred at the default size unless ``framing`` (tx, ty, scale - default) is given. It draws at
  ``render_resolution`` and is upsampled (bilinear) to the student's resolution: the puppet is the capture
  path's extra cost per frame, and the encoder's first stage halves the picture anyway.
- ``LandmarkSolver``: 68 iBUG points -> the curves and framing that the renderer would have drawn them with
  (an MLP trained on the renderer's exact landmark/parameter pairs over random identities:
  models/training/train_landmark_solver.py). Blendshapes the landmarks do not show (gaze, cheek puff)
  come out near their average.
- ``PuppetDrivenStudent``: signal -> puppet picture -> student; what `export` writes as <model>.<kind>.onnx.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.arkit import ARKIT_CURVES, NUM_BLENDSHAPES
from contract.landmarks import NUM_LANDMARKS
from models.data.heads import DEFAULT_SCALE, HeadMotion, Identity, SyntheticHeads, sample_identities
from models.megaportraits.student import IdentityInputStudent, Student

CAPTURE_KINDS = ("arkit", "landmarks")
NUM_CURVES = len(ARKIT_CURVES)  # 52 blendshapes + head yaw/pitch/roll + both eyes' yaw/pitch/roll
NUM_HEAD_ANGLES = 3
NUM_FRAMING = 3  # tx, ty, scale - DEFAULT_SCALE (HeadMotion.framing)
CAPTURE_INPUTS = {"arkit": ("curves", (NUM_CURVES,)), "landmarks": ("landmarks", (NUM_LANDMARKS, 2))}
PUPPET_SEED = 0
PUPPET_AVERAGE_OF = 4096  # identities averaged into the puppet's face


def puppet_identity() -> Identity:
    """The puppet's face: the average of PUPPET_AVERAGE_OF sampled identities (seed PUPPET_SEED), so no feature is
    extreme; hair on, a plain vertical gradient behind it, and a unit light direction. Batch of one."""
    drawn = sample_identities(PUPPET_AVERAGE_OF, generator=torch.Generator().manual_seed(PUPPET_SEED))
    fields = {f.name: getattr(drawn, f.name).mean(dim=0, keepdim=True) for f in dataclasses.fields(Identity)}
    fields["light_direction"] = F.normalize(fields["light_direction"], dim=1)
    fields["background_style"] = torch.tensor([[1.0, 0.0, 0.0]])  # the gradient: nothing busy behind the face
    fields["background_angle"] = torch.tensor([math.pi / 2])
    fields["hair_amount"] = torch.ones(1)
    return Identity(**fields)


def motion_from_curves(curves: Tensor, framing: Tensor | None = None) -> HeadMotion:
    """B×61 wire curves (+ B×3 framing; centred at the default size when None) -> the renderer's HeadMotion."""
    if framing is None:
        framing = curves.new_zeros(curves.shape[0], NUM_FRAMING)
    head = curves[:, NUM_BLENDSHAPES : NUM_BLENDSHAPES + NUM_HEAD_ANGLES]  # B×3 yaw, pitch, roll
    return HeadMotion(
        yaw=head[:, 0], pitch=head[:, 1], roll=head[:, 2],
        tx=framing[:, 0], ty=framing[:, 1], scale=framing[:, 2] + DEFAULT_SCALE,
        expression=curves[:, :NUM_BLENDSHAPES].clamp(0, 1),
    )  # fmt: skip


@dataclass(frozen=True)
class PuppetConfig:
    render_resolution: int  # the puppet draws at this side...
    resolution: int  # ...and is upsampled to the student's

    def __post_init__(self) -> None:
        if self.render_resolution < 16 or self.render_resolution > self.resolution:
            raise ValueError(f"render_resolution must be within [16, {self.resolution}], got {self.render_resolution}")


class Puppet(nn.Module):
    """Curves (+ framing) -> the puppet's face drawn by the renderer: B×3×H×W in [0, 1], on its background."""

    def __init__(self, *, config: PuppetConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = SyntheticHeads(resolution=config.render_resolution)
        self.identity = puppet_identity()

    def forward(self, curves: Tensor, framing: Tensor | None = None) -> Tensor:
        motion = motion_from_curves(curves, framing)
        # The one face broadcast over the batch (not gathered into B copies): its identity-only work folds in ONNX.
        rgb = self.heads.render(self.identity, motion).rgb  # B×3×r×r
        if self.config.render_resolution == self.config.resolution:
            return rgb
        size = (self.config.resolution, self.config.resolution)
        return F.interpolate(rgb, size=size, mode="bilinear", align_corners=False).clamp(0, 1)  # B×3×r×r -> B×3×H×W


@dataclass(frozen=True)
class LandmarkSolverConfig:
    hidden_features: int = 512
    hidden_layers: int = 3


class SolvedMotion(NamedTuple):
    curves: Tensor  # B×61: blendshapes in [0, 1], head yaw/pitch/roll in radians, eye rotations 0
    framing: Tensor  # B×3


# The solver's outputs are bounded like the training motions (models/data/heads/params.py sample_motions).
MAX_HEAD_ANGLE = 0.8  # radians
MAX_FRAMING = 0.25


def solver_features(landmarks: Tensor) -> Tensor:
    """B×68×2 in crop units -> B×139: the shape (centred on its centroid, divided by its RMS radius: what the
    expression moves, a few per cent of the face, made as large as the head's place and size) and the placement
    (centroid offset from the crop's centre, log RMS radius)."""
    centroid = landmarks.mean(dim=1, keepdim=True)  # B×1×2
    centred = landmarks - centroid  # B×68×2
    radius = centred.square().sum(dim=2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-4)  # B×1
    shape = centred / radius.unsqueeze(2)  # B×68×2, unit RMS radius
    placement = torch.cat([(centroid[:, 0] - 0.5) * 4, radius.log()], dim=1)  # B×3
    return torch.cat([shape.flatten(1), placement], dim=1)  # B×136 + B×3


class LandmarkSolver(nn.Module):
    """68 iBUG points in [0, 1] crop coordinates -> the curves and framing that draw them."""

    def __init__(self, *, config: LandmarkSolverConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = NUM_LANDMARKS * 2 + 3  # solver_features
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(width, config.hidden_features), nn.SiLU()]
            width = config.hidden_features
        layers.append(nn.Linear(width, NUM_BLENDSHAPES + NUM_HEAD_ANGLES + NUM_FRAMING))
        self.mlp = nn.Sequential(*layers)

    def forward(self, landmarks: Tensor) -> SolvedMotion:
        out = self.mlp(solver_features(landmarks))  # B×(136 + 3) -> B×58
        blendshapes = torch.sigmoid(out[:, :NUM_BLENDSHAPES])
        head = MAX_HEAD_ANGLE * torch.tanh(out[:, NUM_BLENDSHAPES : NUM_BLENDSHAPES + NUM_HEAD_ANGLES])
        framing = MAX_FRAMING * torch.tanh(out[:, NUM_BLENDSHAPES + NUM_HEAD_ANGLES :])
        eyes = torch.zeros_like(out[:, : NUM_CURVES - NUM_BLENDSHAPES - NUM_HEAD_ANGLES])  # B×6 eye rotations, not drawn
        return SolvedMotion(curves=torch.cat([blendshapes, head, eyes], dim=1), framing=framing)


class PuppetDrivenOutput(NamedTuple):
    rgb: Tensor  # B×3×H×W
    alpha: Tensor  # B×1×H×W


class PuppetDrivenStudent(nn.Module):
    """The wire's capture signal -> the puppet's picture -> the student: arkit curves B×61 (centred head) or
    landmarks B×68×2 (through the solver, framing included). The second input is the student's: avatar indices, or
    identity tensors for an IdentityInputStudent (contract v2)."""

    def __init__(self, *, student: Student | IdentityInputStudent, puppet: Puppet, solver: LandmarkSolver | None = None) -> None:
        super().__init__()
        self.student = student
        self.puppet = puppet
        self.solver = solver

    @property
    def kind(self) -> str:
        return "arkit" if self.solver is None else "landmarks"

    def driver_picture(self, signal: Tensor) -> Tensor:
        """What the student sees for a signal: B×3×H×W."""
        if self.solver is None:
            return self.puppet(signal)
        solved = self.solver(signal)
        return self.puppet(solved.curves, solved.framing)

    def forward(self, signal: Tensor, avatar: Tensor) -> PuppetDrivenOutput:
        out = self.student(self.driver_picture(signal), avatar)  # avatar: B indices, or B×C_id×S×S identity tensors
        return PuppetDrivenOutput(rgb=out.rgb, alpha=out.alpha)
