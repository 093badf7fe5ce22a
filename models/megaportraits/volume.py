"""G3D, the canonical-volume generator of the MegaPortraits base model (DESIGN.md §4.1): a 3-D U-Net
that processes the canonical volume between the two warps.

Level i runs at D×(S/2^i)×(S/2^i) with ``channels[i]`` channels: pooling and upsampling act on
height and width only, since depth (16 in the paper) is already coarse.

``paper512`` shapes (channels 96, 192, 384): B×96×16×64² -> B×96×16×64² -> B×192×16×32²
-> B×384×16×16² -> up + skip B×(384+192)×16×32² -> B×192×16×32² -> up + skip B×(192+96)×16×64²
-> B×96×16×64² -> 1×1×1 conv -> B×96×16×64×64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.megaportraits.teacher_blocks import ResBlock3D, WSConv3d, norm

POOL = (1, 2, 2)  # depth, height, width


class VolumeGenerator(nn.Module):
    """G3D: B×C×D×S×S -> B×C×D×S×S (S divisible by 2^(levels - 1))."""

    def __init__(self, *, volume_channels: int, channels: tuple[int, ...], blocks_per_level: int = 1) -> None:
        super().__init__()
        if not channels or blocks_per_level < 1:
            raise ValueError("G3D needs at least one level and one block per level")
        self.down = nn.ModuleList()
        previous = volume_channels
        for width in channels:
            self.down.append(nn.Sequential(
                ResBlock3D(in_channels=previous, out_channels=width),
                *(ResBlock3D(in_channels=width, out_channels=width) for _ in range(blocks_per_level - 1)),
            ))  # fmt: skip
            previous = width
        self.up = nn.ModuleList()
        for coarse, fine in zip(channels[:0:-1], channels[-2::-1]):  # coarsest pair first
            self.up.append(nn.Sequential(
                ResBlock3D(in_channels=coarse + fine, out_channels=fine),
                *(ResBlock3D(in_channels=fine, out_channels=fine) for _ in range(blocks_per_level - 1)),
            ))  # fmt: skip
        self.out_norm = norm(channels[0])
        self.out = WSConv3d(channels[0], volume_channels, 1)

    def forward(self, volume: Tensor) -> Tensor:
        skips = []
        x = volume
        for level, block in enumerate(self.down):
            if level > 0:
                x = F.avg_pool3d(x, POOL)  # B×c×D×s×s -> B×c×D×s/2×s/2
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, skips[-2::-1]):
            x = F.interpolate(x, scale_factor=tuple(float(f) for f in POOL), mode="nearest")  # B×c×D×s×s -> B×c×D×2s×2s
            x = block(torch.cat([x, skip], dim=1))  # B×(c + c')×D×2s×2s -> B×c'×D×2s×2s
        return self.out(F.relu(self.out_norm(x)))  # -> B×C×D×S×S
