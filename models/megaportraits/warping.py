"""The warps of the MegaPortraits base model (DESIGN.md §4.1): analytic rigid grids from the head
pose, plus expression deltas from the warp generators W_s→c and W_c→d.

Conventions (one place, so the grid is normalised exactly once):
- Volumes are B×C×D×H×W. A sampling grid is B×D×H×W×3 holding (x, y, z) in [-1, 1]: x indexes
  W, y indexes H, z indexes D, as ``F.grid_sample`` reads them.
- ``ALIGN_CORNERS = False`` everywhere: voxel i of N has its centre at (2i + 1)/N - 1, so the
  identity grid samples every voxel at its centre (the volume maps to itself) and one voxel is
  2/N. Public re-implementations that build the grid in normalised coordinates and then normalise
  it again (or mix the align_corners conventions) shift and shrink the volume; the tests check that
  a one-voxel translation moves the volume by exactly one voxel.
- Rotations act on normalised coordinates: the volume stands for a cube whatever its D×H×W
  (depth is just sampled more coarsely; paper: 16×64×64).
- ``grid_sample`` pulls: out(p) = in(grid(p)). The source head is the canonical head posed by
  (R_s, t_s) and deformed by the source expression, so the source→canonical grid is the source
  pose applied to the identity grid plus deltas, ``R_s (p + Δ_s(p)) + t_s`` (this moves the
  source's content by the inverse source pose, as DESIGN.md describes it); the canonical→driver
  grid undoes the driver pose, ``R_dᵀ (q - t_d) + Δ_d(q)`` (the content moves by the driver pose).
  With zero deltas and the identity pose both grids are the identity grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from models.megaportraits.teacher_blocks import AdaptiveResBlock, WSConv2d, norm

ALIGN_CORNERS = False


def voxel_size(count: int) -> float:
    """The width of one voxel in normalised coordinates along an axis of ``count`` voxels."""
    return 2.0 / count


def identity_grid(*, depth: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """D×H×W×3 voxel centres (x, y, z) in normalised coordinates (align_corners=False)."""

    def centres(count: int) -> Tensor:
        return (torch.arange(count, device=device, dtype=dtype) * 2 + 1) / count - 1  # (2i + 1)/N - 1

    z, y, x = torch.meshgrid(centres(depth), centres(height), centres(width), indexing="ij")  # each D×H×W
    return torch.stack([x, y, z], dim=-1)  # -> D×H×W×3


def rotation_matrix(rotation: Tensor) -> Tensor:
    """B×3 (yaw, pitch, roll) in radians -> B×3×3, R = R_z(roll) · R_y(yaw) · R_x(pitch) (SyntheticHeads' order,
    so that head_pose.volume_pose is exact)."""
    yaw, pitch, roll = rotation.unbind(dim=1)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)

    def matrix(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(row, dim=1) for row in rows], dim=1)  # 3 rows of 3 B-vectors -> B×3×3

    cos, sin = torch.cos(yaw), torch.sin(yaw)
    about_y = matrix([[cos, zero, sin], [zero, one, zero], [-sin, zero, cos]])
    cos, sin = torch.cos(pitch), torch.sin(pitch)
    about_x = matrix([[one, zero, zero], [zero, cos, -sin], [zero, sin, cos]])
    cos, sin = torch.cos(roll), torch.sin(roll)
    about_z = matrix([[cos, -sin, zero], [sin, cos, zero], [zero, zero, one]])
    return about_z @ about_y @ about_x


def posed(points: Tensor, *, rotation: Tensor, translation: Tensor, scale: Tensor | None = None) -> Tensor:
    """k R p + t for points B×D×H×W×3 (or D×H×W×3, broadcast over the batch) -> B×D×H×W×3; scale k B×1 (None: 1)."""
    matrices = rotation_matrix(rotation)  # B×3×3
    if scale is not None:
        matrices = matrices * scale.view(-1, 1, 1)
    if points.dim() == 4:
        points = points.unsqueeze(0)  # D×H×W×3 -> 1×D×H×W×3
    rotated = torch.einsum("bij,bdhwj->bdhwi", matrices.to(points.dtype), points.expand(matrices.shape[0], -1, -1, -1, -1))
    return rotated + translation[:, None, None, None, :]  # + B×1×1×1×3


def unposed(points: Tensor, *, rotation: Tensor, translation: Tensor, scale: Tensor | None = None) -> Tensor:
    """Rᵀ (p - t) / k, the inverse of ``posed``, for points B×D×H×W×3 or D×H×W×3 -> B×D×H×W×3."""
    matrices = rotation_matrix(rotation)  # B×3×3
    if scale is not None:
        matrices = matrices / scale.view(-1, 1, 1)
    if points.dim() == 4:
        points = points.unsqueeze(0)  # D×H×W×3 -> 1×D×H×W×3
    centred = points - translation[:, None, None, None, :]  # B×D×H×W×3
    return torch.einsum("bji,bdhwj->bdhwi", matrices.to(points.dtype), centred)  # Rᵀ: note the swapped indices


def source_to_canonical_grid(
    identity: Tensor, deltas: Tensor, *, rotation: Tensor, translation: Tensor, scale: Tensor | None = None
) -> Tensor:
    """k_s R_s (p + Δ_s) + t_s: where each canonical voxel p is found in the source volume. identity: D×H×W×3,
    deltas: B×D×H×W×3."""
    return posed(identity + deltas, rotation=rotation, translation=translation, scale=scale)


def canonical_to_driver_grid(
    identity: Tensor, deltas: Tensor, *, rotation: Tensor, translation: Tensor, scale: Tensor | None = None
) -> Tensor:
    """R_dᵀ (q - t_d) / k_d + Δ_d: where each driver voxel q is found in the canonical volume."""
    return unposed(identity, rotation=rotation, translation=translation, scale=scale) + deltas


def warp(volume: Tensor, grid: Tensor) -> Tensor:
    """Trilinear 5-D pull: B×C×D×H×W volume at B×D'×H'×W'×3 grid -> B×C×D'×H'×W' (outside: zeros)."""
    return F.grid_sample(volume, grid.to(volume.dtype), mode="bilinear", padding_mode="zeros", align_corners=ALIGN_CORNERS)


class WarpGenerator(nn.Module):
    """W_s→c or W_c→d: (e_s, z) -> expression deltas B×D×S×S×3 in normalised units (tanh-bounded).

    e_s B×E×k×k and z tiled to B×Z×k×k are concatenated; a 1×1 conv gives c₀·d₀ channels, reshaped
    into a small volume c₀×d₀×k×k. Each further stage upsamples ×2 in H and W (and in depth until it
    reaches D) and runs a 3-D ResBlock whose GroupNorms are adaptive, conditioned on [z, mean(e_s)].
    A GN -> ReLU -> conv3×3×3 head gives 3 channels and tanh gives the deltas.

    ``paper512`` shapes: [e_s B×512×4×4, z B×512×4×4] -> B×2048×4×4 -> B×512×4×4×4
    -> B×256×8×8×8 -> B×128×16×16×16 -> B×64×16×32×32 -> B×32×16×64×64 -> deltas B×16×64×64×3.
    """

    def __init__(
        self,
        *,
        descriptor_channels: int,
        descriptor_size: int,
        expression_dim: int,
        channels: tuple[int, ...],
        start_depth: int,
        volume_depth: int,
        volume_size: int,
    ) -> None:
        super().__init__()
        stages = len(channels) - 1
        if descriptor_size * 2**stages != volume_size:
            raise ValueError(f"{stages} ×2 stages from {descriptor_size} do not reach volume_size {volume_size}")
        self.start_channels, self.start_depth = channels[0], start_depth
        depth, self.depth_factors = start_depth, []
        for _ in range(stages):
            self.depth_factors.append(2 if depth < volume_depth else 1)
            depth *= self.depth_factors[-1]
        if depth != volume_depth:
            raise ValueError(f"depth {start_depth} doubled over {stages} stages does not reach volume_depth {volume_depth}")
        condition_dim = descriptor_channels + expression_dim
        self.input = WSConv2d(condition_dim, channels[0] * start_depth, 1)
        self.stages = nn.ModuleList(
            AdaptiveResBlock(in_channels=in_channels, out_channels=out_channels, condition_dim=condition_dim, spatial_dims=3)
            for in_channels, out_channels in zip(channels[:-1], channels[1:])
        )
        self.head_norm = norm(channels[-1])
        self.head = nn.Conv3d(channels[-1], 3, 3, padding=1)
        # Small, not zero: deltas start near zero (the warp is nearly rigid) while every layer before
        # the head still gets gradients from the first step.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, descriptor: Tensor, expression: Tensor) -> Tensor:
        """descriptor e_s: B×E×k×k; expression z: B×Z -> deltas B×D×S×S×3."""
        size = descriptor.shape[-1]
        tiled = repeat(expression, "b z -> b z h w", h=size, w=size)  # B×Z -> B×Z×k×k
        x = self.input(torch.cat([descriptor, tiled], dim=1))  # B×(E+Z)×k×k -> B×(c₀·d₀)×k×k
        x = rearrange(x, "b (c d) h w -> b c d h w", c=self.start_channels, d=self.start_depth)  # -> B×c₀×d₀×k×k
        condition = torch.cat([expression, descriptor.mean(dim=(2, 3))], dim=1)  # B×(Z+E)
        for stage, depth_factor in zip(self.stages, self.depth_factors):
            x = F.interpolate(x, scale_factor=(float(depth_factor), 2.0, 2.0), mode="trilinear", align_corners=False)  # ×(f, 2, 2)
            x = stage(x, condition)
        deltas = torch.tanh(self.head(F.relu(self.head_norm(x))))  # B×c×D×S×S -> B×3×D×S×S
        return rearrange(deltas, "b xyz d h w -> b d h w xyz")  # -> B×D×S×S×3, grid layout
