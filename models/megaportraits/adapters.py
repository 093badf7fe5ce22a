"""Driver adapters (DESIGN §4.5): performance capture -> the student's driving code.

The student's driving code is what its driver encoder hands the decoder: one feature map per
encoder stage (finest first; the last is the bottleneck, the others are the skips). An adapter is a
small generator that produces that same pyramid from a capture signal instead of a picture, so one
identity decoder serves three driver kinds:

    image      B×3×H×W          -> DriverEncoder  -> pyramid -> IdentityDecoder(avatar) -> rgb, alpha
    arkit      B×61 curves      -> DriverAdapter  -> pyramid -> (the same decoder)
    landmarks  B×68×2 in [0,1]  -> DriverAdapter  -> pyramid -> (the same decoder)

Signals (the wire protocol's; the curve names are contract/arkit.py's, one copy for every side):
- ``arkit``: 61 floats in Live Link Face order: 52 blendshapes in [0, 1], then head yaw/pitch/roll
  and both eyes' yaw/pitch/roll in radians. Gaze reaches the renderer through the eyeLook*
  blendshapes, so the six eye rotations are accepted and not used. ARKit carries no head
  translation or scale: the adapter also reads three framing offsets (tx, ty, scale - default),
  given from the renderer's exact motion (``HeadMotion.framing``) in training and zero (centred, default size) at run time,
  so curves drive a centred head instead of a blur over every position seen in training.
- ``landmarks``: the 68 iBUG points, x right / y down in [0, 1] over the aligned driver crop.

Shapes for the cpu256 student (encoder channels 16, 32, 64, 96):
    signal B×F -> MLP -> B×(C0·4·4) -> B×C0×4×4 -> [×2, conv] ... -> 16² (96) -> 32² (64) -> 64² (32) -> 128² (16)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.arkit import ARKIT_CURVES, NUM_BLENDSHAPES
from contract.landmarks import NUM_LANDMARKS
from models.blocks import ConvNormAct, resize
from models.megaportraits.student import Student, StudentConfig

ADAPTER_KINDS = ("arkit", "landmarks")
NUM_ARKIT_CURVES = len(ARKIT_CURVES)
NUM_FRAMING = 3  # tx, ty, scale - DEFAULT_SCALE
ADAPTER_INPUTS = {"arkit": ("curves", (NUM_ARKIT_CURVES,)), "landmarks": ("landmarks", (NUM_LANDMARKS, 2))}


@dataclass(frozen=True)
class AdapterConfig:
    kind: str  # "arkit" | "landmarks"
    pyramid_channels: tuple[int, ...]  # the student's encoder channels, finest first
    resolution: int  # the student's resolution
    hidden_features: int = 256  # width of the MLP
    base_size: int = 4  # side of the first feature map the MLP writes
    base_channels: int = 96  # its channels, and those of every upsampling stage between pyramid levels

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"unknown adapter kind {self.kind!r} (known: {', '.join(ADAPTER_KINDS)})")
        coarsest = self.resolution // 2 ** len(self.pyramid_channels)
        if coarsest < self.base_size or coarsest % self.base_size:
            raise ValueError(f"the coarsest pyramid level ({coarsest}²) must be a multiple of base_size {self.base_size}")

    @property
    def in_features(self) -> int:
        return NUM_BLENDSHAPES + 3 + NUM_FRAMING if self.kind == "arkit" else NUM_LANDMARKS * 2

    def pyramid_resolutions(self) -> tuple[int, ...]:
        """Resolution of each pyramid level, finest first (the student encoder's)."""
        return tuple(self.resolution // 2 ** (level + 1) for level in range(len(self.pyramid_channels)))


def adapter_config(kind: str, *, student: StudentConfig) -> AdapterConfig:
    return AdapterConfig(kind=kind, pyramid_channels=student.encoder_channels, resolution=student.resolution)


def arkit_features(curves: Tensor, framing: Tensor | None = None) -> Tensor:
    """B×61 wire curves (+ B×3 framing, zero when absent) -> B×58 adapter input.

    Blendshapes as they are, head angles in radians, eye rotations dropped (see the module docstring)."""
    if framing is None:
        framing = curves.new_zeros(curves.shape[0], NUM_FRAMING)
    head = curves[:, NUM_BLENDSHAPES : NUM_BLENDSHAPES + 3]  # B×3 yaw, pitch, roll
    return torch.cat([curves[:, :NUM_BLENDSHAPES], head, framing], dim=1)  # B×(52+3+3)


def landmark_features(landmarks: Tensor) -> Tensor:
    """B×68×2 in [0, 1] -> B×136 centred on the crop."""
    return (landmarks - 0.5).flatten(1)  # B×68×2 -> B×136


class DriverAdapter(nn.Module):
    """Capture signal -> the student's driving code (its encoder's feature pyramid, finest first)."""

    def __init__(self, *, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        base_channels = config.base_channels
        self.mlp = nn.Sequential(
            nn.Linear(config.in_features, config.hidden_features), nn.ReLU(),
            nn.Linear(config.hidden_features, config.hidden_features), nn.ReLU(),
            nn.Linear(config.hidden_features, base_channels * config.base_size**2),
        )  # fmt: skip
        resolutions = config.pyramid_resolutions()  # finest first
        levels = dict(zip(resolutions, config.pyramid_channels))  # resolution -> channels
        # Upsampling stages from base_size to the finest level (coarsest first); a 1×1 head with its
        # own bias per level, because the decoder expects the encoder's feature scales, not normalised ones.
        self.up = nn.ModuleList()
        self.heads = nn.ModuleDict()  # str(resolution) -> 1×1 conv to that level's channels
        channels, size = base_channels, config.base_size
        if size in levels:
            self.heads[str(size)] = nn.Conv2d(channels, levels[size], 1)
        while size < resolutions[0]:
            size *= 2
            out_channels = levels.get(size, base_channels)
            self.up.append(ConvNormAct(in_channels=channels, out_channels=out_channels))
            channels = out_channels
            if size in levels:
                self.heads[str(size)] = nn.Conv2d(channels, levels[size], 1)

    def forward(self, features: Tensor) -> list[Tensor]:
        """features: B×F (arkit_features / landmark_features). Returns the pyramid, finest first."""
        config = self.config
        x = self.mlp(features).view(-1, config.base_channels, config.base_size, config.base_size)  # B×F -> B×C0×s×s
        by_resolution: dict[int, Tensor] = {}
        if str(config.base_size) in self.heads:
            by_resolution[config.base_size] = F.relu(self.heads[str(config.base_size)](x))
        size = config.base_size
        for stage in self.up:
            size *= 2
            x = stage(resize(x, factor=2, mode="nearest"))  # B×C×r/2×r/2 -> B×C'×r×r
            if str(size) in self.heads:
                # ReLU: the encoder's features are post-ReLU, so the decoder has only seen non-negative codes.
                by_resolution[size] = F.relu(self.heads[str(size)](x))
        return [by_resolution[resolution] for resolution in config.pyramid_resolutions()]


class AdaptedStudentOutput(NamedTuple):
    rgb: Tensor  # B×3×H×W
    alpha: Tensor  # B×1×H×W


class AdaptedStudent(nn.Module):
    """adapter + the student's identity decoder: what `export` writes as <model>.<kind>.onnx.

    Inputs are the wire's: arkit curves B×61 (framing zero: centred) or landmarks B×68×2."""

    def __init__(self, *, student: Student, adapter: DriverAdapter) -> None:
        super().__init__()
        self.student = student
        self.adapter = adapter

    def forward(self, signal: Tensor, avatar: Tensor) -> AdaptedStudentOutput:
        kind = self.adapter.config.kind
        features = arkit_features(signal) if kind == "arkit" else landmark_features(signal)
        out = self.student.decode(self.adapter(features), avatar)
        return AdaptedStudentOutput(rgb=out.rgb, alpha=out.alpha)


def pyramid_distance(predicted: list[Tensor], target: list[Tensor]) -> Tensor:
    """Mean over levels of L1(predicted, target) / mean|target|: every level counts alike."""
    terms = [F.l1_loss(p, t) / t.abs().mean().clamp_min(1e-6) for p, t in zip(predicted, target)]
    return torch.stack(terms).mean()
