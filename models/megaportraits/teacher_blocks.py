"""Blocks shared by the teacher's components (DESIGN.md §4.1, §10).

The teacher normalises with GroupNorm and weight-standardised convolutions (no BatchNorm: batch 1-2
per rank behaves like one sample). ``models/blocks.py`` holds the student's plain-conv blocks; the
teacher's 2-D and 3-D blocks live here:

- ``WSConv2d`` / ``WSConv3d``: scaled weight standardisation (each filter has zero mean and
  variance 1/fan_in), so every conv keeps its input's scale whatever its width;
- pre-activation residual blocks (GroupNorm -> ReLU -> conv, twice, plus a shortcut) in 2-D
  (basic and bottleneck) and 3-D, and a ResNet trunk built from them;
- ``AdaptiveGroupNorm``: GroupNorm whose scale and shift come from a conditioning vector (the warp
  generators' expression code z and appearance descriptor e_s; G2D's z with ``BaseConfig.decoder_expression``),
  and ``AdaptiveResBlock``, the 2-D or 3-D block built on it.

Output heads (rgb, alpha, warp deltas, pose) are plain convs/linears: weight standardisation fixes
each filter's norm, which a head that must start near zero cannot have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import group_count

WEIGHT_EPS = 1e-5  # added to fan_in·var(w): ≈ 1/3 at PyTorch's default init, whatever the width


def standardised(weight: Tensor) -> Tensor:
    """out×in×k… weights -> zero mean and variance 1/fan_in per output filter (scaled WS, NF-ResNets)."""
    dims = tuple(range(1, weight.dim()))
    fan_in = weight[0].numel()
    mean = weight.mean(dim=dims, keepdim=True)
    var = weight.var(dim=dims, keepdim=True, unbiased=False)
    return (weight - mean) * torch.rsqrt(var * fan_in + WEIGHT_EPS)


class WSConv2d(nn.Conv2d):
    """Conv2d with scaled weight standardisation (always ``padding = kernel_size // 2``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, standardised(self.weight), self.bias, self.stride, self.padding)


class WSConv3d(nn.Conv3d):
    """Conv3d with scaled weight standardisation (always ``padding = kernel_size // 2``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv3d(x, standardised(self.weight), self.bias, self.stride, self.padding)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels)


class ResBlock2D(nn.Module):
    """Pre-activation basic block: [GN -> ReLU -> WS conv3×3] × 2 + shortcut; ``stride=2`` halves H and W."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.norm_first = norm(in_channels)
        self.conv_first = WSConv2d(in_channels, out_channels, 3, stride=stride)
        self.norm_second = norm(out_channels)
        self.conv_second = WSConv2d(out_channels, out_channels, 3)
        self.stride = stride
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = WSConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv_first(F.relu(self.norm_first(x)))
        residual = self.conv_second(F.relu(self.norm_second(residual)))
        if self.stride > 1:  # average-pool the shortcut (ResNet-D): a strided 1×1 conv drops 3/4 of the pixels
            x = F.avg_pool2d(x, self.stride)
        return self.shortcut(x) + residual


class Bottleneck2D(nn.Module):
    """Pre-activation ResNet-50 bottleneck: 1×1 (out/4) -> 3×3 (strided) -> 1×1 (out) + shortcut."""

    expansion = 4

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_channels // self.expansion
        self.norm_reduce = norm(in_channels)
        self.reduce = WSConv2d(in_channels, mid, 1)
        self.norm_spatial = norm(mid)
        self.spatial = WSConv2d(mid, mid, 3, stride=stride)
        self.norm_expand = norm(mid)
        self.expand = WSConv2d(mid, out_channels, 1)
        self.stride = stride
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = WSConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.reduce(F.relu(self.norm_reduce(x)))
        residual = self.spatial(F.relu(self.norm_spatial(residual)))
        residual = self.expand(F.relu(self.norm_expand(residual)))
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        return self.shortcut(x) + residual


class ResNetTrunk(nn.Module):
    """ResNet trunk: 7×7 stride-2 stem + 3×3 max-pool (H/4), then stages (the first at stride 1, the
    rest stride 2), and a closing GN -> ReLU (pre-activation nets end un-normalised otherwise).

    ResNet-18: stem 64, widths (64, 128, 256, 512), blocks (2, 2, 2, 2), basic blocks;
    ResNet-50: stem 64, widths (256, 512, 1024, 2048), blocks (3, 4, 6, 3), bottlenecks.
    B×in×H×W -> B×widths[-1]×H/2^(len(widths)+1)×W/2^(len(widths)+1).
    """

    def __init__(self, *, in_channels: int, stem_channels: int, widths: tuple[int, ...], blocks: tuple[int, ...], bottleneck: bool) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths or min(blocks) < 1:
            raise ValueError("a ResNet trunk needs one block count ≥ 1 per stage width")
        block_type = Bottleneck2D if bottleneck else ResBlock2D
        self.stem = WSConv2d(in_channels, stem_channels, 7, stride=2)
        self.stem_norm = norm(stem_channels)
        layers: list[nn.Module] = []
        channels = stem_channels
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(block_type(in_channels=channels, out_channels=width, stride=stride))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.out_norm = norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_norm(self.stem(x)))  # B×in×H×W -> B×stem×H/2×W/2
        x = F.max_pool2d(x, 3, stride=2, padding=1)  # -> B×stem×H/4×W/4
        return F.relu(self.out_norm(self.stages(x)))


class ResBlock3D(nn.Module):
    """Pre-activation 3-D block: [GN -> ReLU -> WS conv3×3×3] × 2 + shortcut (1×1×1 when widths differ)."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm_first = norm(in_channels)
        self.conv_first = WSConv3d(in_channels, out_channels, 3)
        self.norm_second = norm(out_channels)
        self.conv_second = WSConv3d(out_channels, out_channels, 3)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = WSConv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv_first(F.relu(self.norm_first(x)))
        residual = self.conv_second(F.relu(self.norm_second(residual)))
        return self.shortcut(x) + residual


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without own parameters; scale (1 + γ) and shift β are linear in a condition vector.

    x: B×C×… (any spatial rank); condition: B×N -> B×C×… .
    """

    def __init__(self, *, channels: int, condition_dim: int) -> None:
        super().__init__()
        self.groups = group_count(channels)
        self.scale = nn.Linear(condition_dim, channels)
        self.shift = nn.Linear(condition_dim, channels)
        for projection in (self.scale, self.shift):  # start as plain GroupNorm plus a small modulation
            nn.init.zeros_(projection.bias)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        broadcast = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)  # B×C -> B×C×1×…×1
        scale = 1 + self.scale(condition).view(broadcast)
        shift = self.shift(condition).view(broadcast)
        return F.group_norm(x, self.groups) * scale + shift


class AdaptiveResBlock(nn.Module):
    """ResBlock2D or ResBlock3D (``spatial_dims``) whose two GroupNorms are adaptive (conditioned on a vector):
    x B×in×… , condition B×N -> B×out×… ."""

    def __init__(self, *, in_channels: int, out_channels: int, condition_dim: int, spatial_dims: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = WSConv2d if spatial_dims == 2 else WSConv3d
        self.norm_first = AdaptiveGroupNorm(channels=in_channels, condition_dim=condition_dim)
        self.conv_first = conv(in_channels, out_channels, 3)
        self.norm_second = AdaptiveGroupNorm(channels=out_channels, condition_dim=condition_dim)
        self.conv_second = conv(out_channels, out_channels, 3)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = conv(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        residual = self.conv_first(F.relu(self.norm_first(x, condition)))
        residual = self.conv_second(F.relu(self.norm_second(residual, condition)))
        return self.shortcut(x) + residual
