"""G2D, the image decoder of the MegaPortraits base model (DESIGN.md §4.1), with the projection
from the driver volume to a 2-D feature map in front of it.

Projection: reshape C×D -> C·D channels, then a 1×1 conv. G2D: ResBlocks at S×S, then per stage a
nearest ×2 upsampling and a ResBlock, up to the output resolution; a GN -> ReLU -> conv3×3 head gives
rgb and an alpha (foreground) mask.

``paper512`` shapes (channels 512, 256, 128, 64): driver volume B×96×16×64×64 -> reshape
B×1536×64×64 -> 1×1 conv B×512×64×64 -> ResBlocks -> B×256×128² -> B×128×256² -> B×64×512²
-> head B×4×512×512 -> rgb B×3×512×512, alpha B×1×512×512.

With ``condition_dim`` (``BaseConfig.decoder_expression``, this project's addition) every ResBlock's GroupNorms are
adaptive, their scale and shift read from the driver's expression code z (B×Z). The paper's G2D sees only the
warped volume, and what it draws must then come from voxels the warps move; an open mouth's inside (about 2×2 voxels
of cpu128's 32×32 volume) is in no voxel of a closed-mouth source. The cpu128 teachers without it kept their mouths
closed even where z moved with the jaw (README, "The teacher on two CPU cores").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.megaportraits.teacher_blocks import AdaptiveResBlock, ResBlock2D, WSConv2d, norm


class DecodedImage(NamedTuple):
    rgb: Tensor  # B×3×H×W in [0, 1]
    alpha: Tensor  # B×1×H×W in [0, 1]


class Decoder(nn.Module):
    """Projection + G2D: B×C×D×S×S (and z B×Z with ``condition_dim``) -> DecodedImage at S·2^(len(channels) - 1)."""

    def __init__(self, *, volume_channels: int, volume_depth: int, channels: tuple[int, ...], blocks: int, condition_dim: int = 0) -> None:
        super().__init__()
        self.condition_dim = condition_dim

        def block(in_channels: int, out_channels: int) -> nn.Module:
            if condition_dim:
                return AdaptiveResBlock(in_channels=in_channels, out_channels=out_channels, condition_dim=condition_dim, spatial_dims=2)
            return ResBlock2D(in_channels=in_channels, out_channels=out_channels)

        self.project = WSConv2d(volume_channels * volume_depth, channels[0], 1)
        self.blocks = nn.ModuleList(block(channels[0], channels[0]) for _ in range(blocks))
        self.up = nn.ModuleList(block(in_channels, out_channels) for in_channels, out_channels in zip(channels[:-1], channels[1:]))
        self.head_norm = norm(channels[-1])
        self.head = nn.Conv2d(channels[-1], 4, 3, padding=1)

    def forward(self, volume: Tensor, expression: Tensor | None = None) -> DecodedImage:
        """volume B×C×D×S×S; expression z B×Z exactly when the decoder was built with ``condition_dim``."""
        if (expression is None) != (self.condition_dim == 0):
            raise ValueError("this G2D reads the expression code z" if self.condition_dim else "this G2D takes no expression code")

        def run(block: nn.Module, x: Tensor) -> Tensor:
            return block(x, expression) if self.condition_dim else block(x)

        x = self.project(rearrange(volume, "b c d h w -> b (c d) h w"))  # B×C×D×S×S -> B×(C·D)×S×S -> B×c₀×S×S
        for block in self.blocks:
            x = run(block, x)
        for block in self.up:
            x = run(block, F.interpolate(x, scale_factor=2.0, mode="nearest"))  # B×c×s×s -> B×c'×2s×2s
        logits = self.head(F.relu(self.head_norm(x)))  # -> B×4×H×W
        rgb_logits, alpha_logits = logits.split([3, 1], dim=1)  # -> B×3×H×W, B×1×H×W
        return DecodedImage(rgb=torch.sigmoid(rgb_logits), alpha=torch.sigmoid(alpha_logits))
