"""E_app, the appearance encoder of the MegaPortraits base model (DESIGN.md §4.1).

From the source image it computes
- the volumetric features v_s (C×D×S×S; paper: 96×16×64×64): a conv stem, strided ResBlocks down
  to S×S, a 1×1 conv to C·D channels, a reshape into a volume, and a few 3-D ResBlocks;
- the global descriptor e_s (E×k×k; DESIGN: a ResNet-50 trunk pooled to 512×4×4), which conditions
  both warp generators.

Shapes for the ``paper512`` preset (B = batch):
    source B×3×512×512 -> stem B×64×512×512 -> down B×128×256² -> B×256×128² -> B×512×64²
    -> 1×1 conv B×1536×64×64 -> reshape B×96×16×64×64 -> 3-D ResBlocks -> v_s B×96×16×64×64
    source -> ResNet-50 trunk B×2048×16×16 -> pool B×2048×4×4 -> 1×1 conv -> e_s B×512×4×4
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.megaportraits.teacher_blocks import ResBlock2D, ResBlock3D, ResNetTrunk, WSConv2d, norm


class Appearance(NamedTuple):
    volume: Tensor  # v_s: B×C×D×S×S
    descriptor: Tensor  # e_s: B×E×k×k


class VolumeEncoder(nn.Module):
    """Image -> v_s. ``channels``: the stem's width, then one per stride-2 ResBlock."""

    def __init__(self, *, channels: tuple[int, ...], volume_channels: int, volume_depth: int, volume_blocks: int) -> None:
        super().__init__()
        self.volume_channels = volume_channels
        self.volume_depth = volume_depth
        self.stem = WSConv2d(3, channels[0], 3)
        self.down = nn.Sequential(*(
            ResBlock2D(in_channels=in_channels, out_channels=out_channels, stride=2)
            for in_channels, out_channels in zip(channels[:-1], channels[1:])
        ))  # fmt: skip
        self.out_norm = norm(channels[-1])
        self.to_volume = WSConv2d(channels[-1], volume_channels * volume_depth, 1)
        self.blocks = nn.Sequential(*(ResBlock3D(in_channels=volume_channels, out_channels=volume_channels) for _ in range(volume_blocks)))

    def forward(self, image: Tensor) -> Tensor:
        x = self.down(self.stem(image))  # B×3×H×W -> B×c×S×S
        x = self.to_volume(F.relu(self.out_norm(x)))  # -> B×(C·D)×S×S
        volume = rearrange(x, "b (c d) h w -> b c d h w", c=self.volume_channels, d=self.volume_depth)  # -> B×C×D×S×S
        return self.blocks(volume)


class GlobalDescriptor(nn.Module):
    """Image -> e_s: a ResNet trunk, adaptive average pooling to k×k, and a 1×1 conv to E channels."""

    def __init__(
        self,
        *,
        stem_channels: int,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        bottleneck: bool,
        descriptor_channels: int,
        descriptor_size: int,
    ) -> None:
        super().__init__()
        self.descriptor_size = descriptor_size
        self.trunk = ResNetTrunk(in_channels=3, stem_channels=stem_channels, widths=widths, blocks=blocks, bottleneck=bottleneck)
        self.project = WSConv2d(widths[-1], descriptor_channels, 1)

    def forward(self, image: Tensor) -> Tensor:
        features = self.trunk(image)  # B×3×H×W -> B×w×H/2^(n+1)×W/2^(n+1)
        pooled = F.adaptive_avg_pool2d(features, self.descriptor_size)  # -> B×w×k×k
        return self.project(pooled)  # -> B×E×k×k


class AppearanceEncoder(nn.Module):
    """E_app: source image in [0, 1] -> Appearance(v_s, e_s)."""

    def __init__(
        self,
        *,
        channels: tuple[int, ...],
        volume_channels: int,
        volume_depth: int,
        volume_blocks: int,
        descriptor_stem: int,
        descriptor_widths: tuple[int, ...],
        descriptor_blocks: tuple[int, ...],
        descriptor_bottleneck: bool,
        descriptor_channels: int,
        descriptor_size: int,
    ) -> None:
        super().__init__()
        self.volume = VolumeEncoder(
            channels=channels,
            volume_channels=volume_channels,
            volume_depth=volume_depth,
            volume_blocks=volume_blocks,
        )
        self.descriptor = GlobalDescriptor(
            stem_channels=descriptor_stem,
            widths=descriptor_widths,
            blocks=descriptor_blocks,
            bottleneck=descriptor_bottleneck,
            descriptor_channels=descriptor_channels,
            descriptor_size=descriptor_size,
        )

    def forward(self, source: Tensor) -> Appearance:
        x = source * 2 - 1  # [0, 1] -> [-1, 1]
        return Appearance(volume=self.volume(x), descriptor=self.descriptor(x))
