"""Small reusable building blocks composed into every network (DESIGN.md §10, first-order-model style).

Normalisation is GroupNorm throughout (DESIGN.md §4.1: no BatchNorm, so batch 1-2 per rank and
mixed-avatar batches behave exactly like single samples). SPADE normalises without parameters and
takes its scale and shift from a conditioning map (here the student's per-avatar identity tensor).
Upsampling is nearest/bilinear resize + conv, never transposed convs (checkerboards, and slower on
ONNX Runtime CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_count(channels: int, *, channels_per_group: int = 8, max_groups: int = 32) -> int:
    """Number of GroupNorm groups for ``channels``: about 8 channels a group, dividing ``channels``."""
    groups = max(1, min(max_groups, channels // channels_per_group))
    while channels % groups:
        groups -= 1
    return groups


def resize(x: Tensor, *, factor: int, mode: str) -> Tensor:
    """Upsample B×C×h×w -> B×C×(h·factor)×(w·factor) (factor 1 is the identity)."""
    if factor == 1:
        return x
    if mode == "nearest":
        return F.interpolate(x, scale_factor=float(factor), mode="nearest")
    return F.interpolate(x, scale_factor=float(factor), mode=mode, align_corners=False)


def resize_square(image: Tensor, size: int) -> Tensor:
    """B×C×H×W -> B×C×size×size: area-averaged when shrinking (no aliasing), bilinear when growing."""
    if image.shape[-2:] == (size, size):
        return image
    if image.shape[-1] > size:
        return F.adaptive_avg_pool2d(image, size)
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def on_white(rgb: Tensor, alpha: Tensor) -> Tensor:
    """The foreground composited on white: B×3×H×W, B×1×H×W -> B×3×H×W."""
    return rgb * alpha + (1 - alpha)


class ConvNormAct(nn.Module):
    """conv k×k (optionally strided) -> GroupNorm -> ReLU."""

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, activate: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(group_count(out_channels), out_channels)
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x))
        return F.relu(x) if self.activate else x


class ResBlock(nn.Module):
    """ResNet-18 basic block: two 3×3 conv-norms plus a shortcut; ``stride=2`` makes it a down block."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.first = ConvNormAct(in_channels=in_channels, out_channels=out_channels, stride=stride)
        self.second = ConvNormAct(in_channels=out_channels, out_channels=out_channels, activate=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvNormAct(in_channels=in_channels, out_channels=out_channels, kernel_size=1, stride=stride, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.second(self.first(x)) + self.shortcut(x))


class DownBlock(ResBlock):
    """A ResBlock that halves the resolution (B×C×H×W -> B×C'×H/2×W/2)."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels=in_channels, out_channels=out_channels, stride=2)


class IdentityHidden(nn.Module):
    """The hidden map SPADE's scale and shift are read from: ReLU(conv3×3(condition)).

    Computed once per resolution and shared by every SPADE there (SPADE-GAN computes one per
    SPADE; sharing costs little capacity and saves most of the modulation convs).
    """

    def __init__(self, *, condition_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(condition_channels, hidden_channels, 3, padding=1)

    def forward(self, condition: Tensor) -> Tensor:
        return F.relu(self.conv(condition))


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: GroupNorm without parameters, then ``x·γ + β``.

    γ = 1 + conv1×1(hidden) and β = conv1×1(hidden) are computed at the hidden map's resolution
    (at most 64×64, so cheap) and only then upsampled bilinearly by ``upsample_factor`` to the
    features' resolution. γ and β are separate convs rather than one split in two: a split of a
    full-resolution tensor is an extra copy on ONNX Runtime.
    """

    def __init__(self, *, channels: int, hidden_channels: int, upsample_factor: int = 1) -> None:
        super().__init__()
        self.groups = group_count(channels)
        self.upsample_factor = upsample_factor
        self.scale = nn.Conv2d(hidden_channels, channels, 1)
        self.shift = nn.Conv2d(hidden_channels, channels, 1)
        for conv in (self.scale, self.shift):  # start as a plain normalisation plus modulation noise
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor, hidden: Tensor) -> Tensor:
        """x: B×C×H×W; hidden: B×C_hidden×(H/f)×(W/f) with f = upsample_factor."""
        scale = resize(1 + self.scale(hidden), factor=self.upsample_factor, mode="bilinear")  # B×C×H/f×W/f -> B×C×H×W
        shift = resize(self.shift(hidden), factor=self.upsample_factor, mode="bilinear")  # B×C×H/f×W/f -> B×C×H×W
        return F.group_norm(x, self.groups) * scale + shift


class SPADEResBlock(nn.Module):
    """SPADE residual block (SPADE-GAN): [SPADE -> ReLU -> conv3×3] × 2 plus the identity shortcut.

    Every normalisation is a SPADE reading the same hidden identity map.
    """

    def __init__(self, *, channels: int, hidden_channels: int, upsample_factor: int = 1) -> None:
        super().__init__()
        self.norm_first = SPADE(channels=channels, hidden_channels=hidden_channels, upsample_factor=upsample_factor)
        self.conv_first = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm_second = SPADE(channels=channels, hidden_channels=hidden_channels, upsample_factor=upsample_factor)
        self.conv_second = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, hidden: Tensor) -> Tensor:
        residual = self.conv_first(F.relu(self.norm_first(x, hidden)))
        residual = self.conv_second(F.relu(self.norm_second(residual, hidden)))
        return x + residual


def conv_multiply_accumulates(module: nn.Module, *inputs: Tensor) -> int:
    """Multiply-accumulates per sample of every Conv2d/Conv3d/Linear in one forward pass (hooks; FLOPs ≈ 2×)."""
    total = 0

    def count(layer: nn.Module, layer_inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        per_sample_outputs = output[0].numel()  # output[0]: the first sample's C×H×W (C×D×H×W for a Conv3d)
        if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
            total += per_sample_outputs * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
        elif isinstance(layer, nn.Linear):
            total += per_sample_outputs * layer.in_features

    counted = (nn.Conv2d, nn.Conv3d, nn.Linear)
    handles = [layer.register_forward_hook(count) for layer in module.modules() if isinstance(layer, counted)]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total
