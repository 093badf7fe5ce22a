"""The identity embedder (DESIGN §4.3; the few-shot talking-heads paper's embedder, made to speak the student's
identity tensors): K portrait frames of one person -> the identity tensor C_id×S×S that the student's decoder reads,
so enrolling an avatar is one forward pass (one-shot), and refining it fits only that tensor (few-shot).

    frames B×K×3×H×W in [0, 1] -> per frame: strided stem, DownBlocks until S (H/2 ... S), ResBlocks
    -> B·K×C×S×S -> a 1×1 conv to C_id, plus the frame's pooled summary (colour, hair, lighting: what is
    everywhere in the picture) broadcast over the map -> mean over the K frames -> B×C_id×S×S

Shapes for the ``cpu256`` preset: 256 -> stem 128 (32) -> 64 (64) -> 32 (96) -> C_id 32 at 32×32. The mean over
frames makes K free at run time (an ONNX graph with a dynamic K), and a frame that adds nothing moves the mean a
little. It is meta-learned with the student over many SyntheticHeads identities (models/training/train_embedder.py):
each step embeds new identities' frames and trains both through the student's reenactment of another driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from models.blocks import ConvNormAct, DownBlock, ResBlock
from models.megaportraits.student import StudentConfig


@dataclass(frozen=True)
class IdentityEmbedderConfig:
    resolution: int  # the frames' side (the student's)
    identity_channels: int  # C_id, as the student's
    identity_size: int  # S, as the student's
    channels: tuple[int, ...]  # the stem's, then one per DownBlock: log2(resolution / identity_size) entries in all
    blocks_at_identity_size: int = 2  # ResBlocks at S before the output

    def __post_init__(self) -> None:
        halvings = math.log2(self.resolution / self.identity_size)
        if not halvings.is_integer() or halvings < 1:
            raise ValueError(f"resolution / identity_size must be a power of two ≥ 2, got {self.resolution} / {self.identity_size}")
        if len(self.channels) != int(halvings):
            raise ValueError(f"channels needs {int(halvings)} entries (one per halving from {self.resolution} to {self.identity_size})")


EMBEDDER_CHANNELS = {"tiny": (8, 16), "cpu256": (32, 64, 96)}  # per student preset


def embedder_config(preset: str, student: StudentConfig) -> IdentityEmbedderConfig:
    """The embedder for a student of ``preset``: its resolution and identity tensor shape."""
    if preset not in EMBEDDER_CHANNELS:
        raise ValueError(f"no identity embedder for preset {preset!r} (known: {', '.join(EMBEDDER_CHANNELS)})")
    return IdentityEmbedderConfig(
        resolution=student.resolution,
        identity_channels=student.identity_channels,
        identity_size=student.identity_size,
        channels=EMBEDDER_CHANNELS[preset],
    )


class IdentityEmbedder(nn.Module):
    """K frames of one person -> their identity tensor: B×K×3×H×W -> B×C_id×S×S."""

    def __init__(self, *, config: IdentityEmbedderConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.channels
        stages: list[nn.Module] = [ConvNormAct(in_channels=3, out_channels=channels[0], stride=2)]
        stages += [DownBlock(in_channels=c_in, out_channels=c_out) for c_in, c_out in zip(channels[:-1], channels[1:])]
        stages += [ResBlock(in_channels=channels[-1], out_channels=channels[-1]) for _ in range(config.blocks_at_identity_size)]
        self.features = nn.Sequential(*stages)
        self.spatial = nn.Conv2d(channels[-1], config.identity_channels, 1)
        self.summary = nn.Linear(channels[-1], config.identity_channels)

    def forward(self, frames: Tensor) -> Tensor:
        batch, shots = frames.shape[:2]
        x = self.features(frames.flatten(0, 1) * 2 - 1)  # B×K×3×H×W -> B·K×3×H×W -> B·K×C×S×S
        summary = self.summary(x.mean(dim=(2, 3)))  # B·K×C -> B·K×C_id
        per_frame = self.spatial(x) + summary[:, :, None, None]  # B·K×C_id×S×S
        return per_frame.unflatten(0, (batch, shots)).mean(dim=1)  # B·K×… -> B×K×C_id×S×S -> B×C_id×S×S
