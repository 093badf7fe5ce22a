"""Every trainer's image augmentation, in one place: colour jitter, warps (thin-plate spline for the base
model, DESIGN.md §4.1; a mild affine one for the student) and Gaussian blur (the parameter
regressor). The drivers' augmentation keeps their identity (face proportions, skin, hair and background
colours) from leaking into the output while their motion (pose, expression) still can.

Everything is batched, runs on the images' device, and draws its random numbers on the CPU from the
``torch.Generator`` it is given: the same generator state gives the same augmentation on any device.

    images B×3×H×W in [0, 1] ─colour_jitter─▶ ─thin_plate_spline_warp or affine_warp─▶ B×3×H×W in [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(generator: torch.Generator, *shape: int) -> Tensor:
    """Uniform in [-1, 1] on the CPU."""
    return torch.rand(*shape, generator=generator) * 2 - 1


# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def colour_jitter(images: Tensor, *, strength: float, generator: torch.Generator) -> Tensor:
    """Random brightness, contrast, saturation, hue rotation and per-channel gains, per image.

    ``strength`` in [0, 1]: 0 is the identity; at 1 brightness moves by up to ±0.5, contrast and
    saturation scale by up to ×(1 ± 1) (saturation can reach grey), hue turns by up to ±π and each
    channel's gain by up to ±50 %. B×3×H×W in [0, 1] -> same, clamped to [0, 1]."""
    if strength <= 0:
        return images
    batch = images.shape[0]
    brightness = 0.5 * strength * _uniform(generator, batch)
    contrast = 1 + strength * _uniform(generator, batch)
    saturation = 1 + strength * _uniform(generator, batch)
    hue = torch.pi * strength * _uniform(generator, batch)
    gains = 1 + 0.5 * strength * _uniform(generator, batch, 3)

    # Per image, one 3×3 colour matrix: YIQ -> scale chroma (saturation) and rotate it (hue) -> RGB.
    cos, sin = hue.cos(), hue.sin()
    chroma = torch.zeros(batch, 3, 3)
    chroma[:, 0, 0] = 1
    chroma[:, 1, 1], chroma[:, 1, 2] = saturation * cos, -saturation * sin
    chroma[:, 2, 1], chroma[:, 2, 2] = saturation * sin, saturation * cos
    matrix = gains.unsqueeze(2) * (_YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ)  # B×3×3, gains on the output rows
    matrix = matrix.to(device=images.device, dtype=images.dtype)
    out = torch.einsum("bij,bjhw->bihw", matrix, images)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.to(out).view(-1, 1, 1, 1) + mean + brightness.to(out).view(-1, 1, 1, 1)
    return out.clamp(0, 1)


def _tps_kernel(squared_distance: Tensor) -> Tensor:
    """U(r) = r² log r² (0 at r = 0)."""
    return squared_distance * torch.log(squared_distance.clamp_min(1e-12))


def _control_points(points_per_side: int) -> Tensor:
    """A regular points_per_side² grid over [-1, 1]²: N×2 (x, y)."""
    axis = torch.linspace(-1, 1, points_per_side)
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)


def thin_plate_spline_grids(
    batch: int, *, height: int, width: int, strength: float, points_per_side: int, generator: torch.Generator
) -> Tensor:
    """Sampling grids of random thin-plate-spline warps, for ``F.grid_sample``: B×H×W×2 (x, y in [-1, 1]).

    The control points sit on a points_per_side × points_per_side grid; each output pixel at a control
    point samples the input at that point plus a Gaussian displacement of standard deviation
    ``strength`` (in units of the half-image). Between them the spline interpolates smoothly, with an
    affine part, so the warp bends the face without tearing it."""
    controls = _control_points(points_per_side)  # N×2
    count = controls.shape[0]
    displaced = controls + strength * torch.randn(batch, count, 2, generator=generator)  # B×N×2
    # Solve [[K, P], [Pᵀ, 0]] [w; a] = [displaced; 0] once per batch (the matrix is the same for all).
    kernel = _tps_kernel(torch.cdist(controls, controls).square())  # N×N
    affine = torch.cat([torch.ones(count, 1), controls], dim=1)  # N×3
    system = torch.zeros(count + 3, count + 3)
    system[:count, :count], system[:count, count:], system[count:, :count] = kernel, affine, affine.T
    right = torch.cat([displaced, torch.zeros(batch, 3, 2)], dim=1)  # B×(N+3)×2
    parameters = torch.linalg.solve(system, right)  # B×(N+3)×2

    ys = torch.linspace(-1, 1, height) * (height - 1) / height  # pixel centres (align_corners=False)
    xs = torch.linspace(-1, 1, width) * (width - 1) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    pixels = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)  # HW×2
    basis = torch.cat([_tps_kernel(torch.cdist(pixels, controls).square()), torch.ones(height * width, 1), pixels], dim=1)  # HW×(N+3)
    return (basis @ parameters).view(batch, height, width, 2)  # B×HW×2 -> B×H×W×2


def thin_plate_spline_warp(images: Tensor, *, strength: float, points_per_side: int, generator: torch.Generator) -> Tensor:
    """Each image warped by its own random thin-plate spline (see ``thin_plate_spline_grids``);
    borders are extended. B×C×H×W -> same."""
    if strength <= 0:
        return images
    batch, _, height, width = images.shape
    grids = thin_plate_spline_grids(
        batch, height=height, width=width, strength=strength, points_per_side=points_per_side, generator=generator
    ).to(device=images.device, dtype=images.dtype)
    return F.grid_sample(images, grids, mode="bilinear", padding_mode="border", align_corners=False)


def affine_warp(images: Tensor, *, strength: float, generator: torch.Generator) -> Tensor:
    """Each image scaled by its own factors in [1 - strength, 1 + strength] per axis (anisotropic: face
    proportions change) and shifted by up to strength/2 half-images; borders are extended. B×C×H×W -> same."""
    if strength <= 0:
        return images
    batch = images.shape[0]
    theta = torch.zeros(batch, 2, 3)  # B×2×3 affine matrices on [-1, 1] coordinates
    theta[:, 0, 0] = 1 + strength * _uniform(generator, batch)
    theta[:, 1, 1] = 1 + strength * _uniform(generator, batch)
    theta[:, :, 2] = 0.5 * strength * _uniform(generator, batch, 2)
    grid = F.affine_grid(theta.to(device=images.device, dtype=images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """A Gaussian blur per image (sigma: B, in pixels; 0 leaves the image as it is). B×C×H×W -> same."""
    radius = 3
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.clamp_min(1e-3).view(-1, 1)) ** 2)  # B×7
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    batch, channels, height, width = images.shape
    x = F.pad(images.reshape(1, batch * channels, height, width), (radius, radius, radius, radius), mode="replicate")
    weight = kernel.repeat_interleave(channels, dim=0)  # (B·C)×7
    x = F.conv2d(x, weight.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)  # horizontal
    x = F.conv2d(x, weight.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)  # vertical
    return x.reshape(batch, channels, height, width)


WARP_KINDS = ("thin-plate-spline", "affine")


@dataclass(frozen=True)
class DriverAugmentation:
    colour: float = 0.5  # colour_jitter strength [0-1]
    warp: float = 0.06  # displacement [0-0.2]: the thin-plate spline's std, or the affine's scale range, in half-images
    warp_kind: str = "thin-plate-spline"  # WARP_KINDS: the base model's; "affine" for the student
    warp_points: int = 3  # thin-plate spline's control points per side (3 -> 9 control points)

    def __post_init__(self) -> None:
        if not 0 <= self.colour <= 1:
            raise ValueError(f"colour jitter strength must be in [0, 1], got {self.colour}")
        if not 0 <= self.warp <= 0.2:
            raise ValueError(f"warp strength must be in [0, 0.2], got {self.warp}")
        if self.warp_kind not in WARP_KINDS:
            raise ValueError(f"warp kind must be one of {', '.join(WARP_KINDS)}, got {self.warp_kind!r}")
        if not 2 <= self.warp_points <= 8:
            raise ValueError(f"warp control points per side must be in [2, 8], got {self.warp_points}")

    def __call__(self, drivers: Tensor, *, generator: torch.Generator) -> Tensor:
        """B×3×H×W in [0, 1] -> the same drivers, colour-jittered then warped."""
        jittered = colour_jitter(drivers, strength=self.colour, generator=generator)
        if self.warp_kind == "affine":
            return affine_warp(jittered, strength=self.warp, generator=generator)
        return thin_plate_spline_warp(jittered, strength=self.warp, points_per_side=self.warp_points, generator=generator)
