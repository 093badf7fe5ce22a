"""E_mtn, the motion encoder of the MegaPortraits base model (DESIGN.md §4.1).

From an image (source or driver) it computes the head pose — rotation (yaw, pitch, roll) and
translation t — and an expression vector z (paper: 512; EMOPortraits: 128 with dropout).

The paper takes the pose from a pretrained, frozen head-pose network. None can be downloaded here,
so the config chooses (``BaseConfig.pose_source``):
- ``"learned"``: a pose head on the same trunk, trained end to end with the rest of the model;
- ``"given"``: no pose head; the caller passes the pose (e.g. solved from landmarks) to ``forward``.

Pose conventions (used by ``warping.py``): angles in radians; yaw turns about the volume's y axis
(image rows), pitch about x (image columns), roll about z (depth); translation is in normalised
volume units (the volume spans [-1, 1] on every axis, so one voxel along x is 2/S).

Shapes (ResNet-18 trunk, ``paper512``): image B×3×512×512 -> resized B×3×256×256 -> trunk
B×512×8×8 -> pooled B×512 -> rotation B×3, translation B×3, z B×512.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.megaportraits.teacher_blocks import ResNetTrunk

PoseSource = Literal["learned", "given"]


class HeadPose(NamedTuple):
    rotation: Tensor  # B×3: yaw, pitch, roll in radians
    translation: Tensor  # B×3: x, y, z in normalised volume units


class Motion(NamedTuple):
    rotation: Tensor  # B×3: yaw, pitch, roll in radians
    translation: Tensor  # B×3: x, y, z in normalised volume units
    expression: Tensor  # z: B×Z

    @property
    def pose(self) -> HeadPose:
        return HeadPose(rotation=self.rotation, translation=self.translation)


class MotionEncoder(nn.Module):
    """E_mtn: image in [0, 1] -> Motion. The image is resized to ``input_resolution`` first."""

    def __init__(
        self,
        *,
        input_resolution: int,
        stem_channels: int,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        expression_dim: int,
        expression_dropout: float,
        pose_source: PoseSource,
    ) -> None:
        super().__init__()
        if pose_source not in ("learned", "given"):
            raise ValueError(f"pose_source must be 'learned' or 'given', got {pose_source!r}")
        self.input_resolution = input_resolution
        self.pose_source = pose_source
        self.trunk = ResNetTrunk(in_channels=3, stem_channels=stem_channels, widths=widths, blocks=blocks, bottleneck=False)
        self.expression = nn.Linear(widths[-1], expression_dim)
        self.dropout = nn.Dropout(expression_dropout)
        self.pose: nn.Linear | None = None
        if pose_source == "learned":
            # Zero-initialised: every image starts at the identity pose, so early training does not
            # fight random rotations (its weights still get gradients from the first step).
            self.pose = nn.Linear(widths[-1], 6)
            nn.init.zeros_(self.pose.weight)
            nn.init.zeros_(self.pose.bias)

    def forward(self, image: Tensor, *, pose: HeadPose | None = None) -> Motion:
        """image: B×3×H×W in [0, 1]; ``pose`` is required with pose_source "given", refused with "learned"."""
        if pose is None and self.pose is None:
            raise ValueError("pose_source is 'given': pass the head pose")
        if pose is not None and self.pose is not None:
            raise ValueError("pose_source is 'learned': E_mtn predicts the pose; do not pass one")
        x = image * 2 - 1  # [0, 1] -> [-1, 1]
        if x.shape[-1] != self.input_resolution or x.shape[-2] != self.input_resolution:
            x = F.interpolate(x, size=(self.input_resolution, self.input_resolution), mode="bilinear", align_corners=False, antialias=True)
        features = self.trunk(x).mean(dim=(2, 3))  # B×w×h×w' -> B×w
        expression = self.dropout(self.expression(features))  # -> B×Z
        if self.pose is not None:
            rotation, translation = self.pose(features).split([3, 3], dim=1)  # B×6 -> B×3, B×3
            return Motion(rotation=rotation, translation=translation, expression=expression)
        assert pose is not None
        return Motion(rotation=pose.rotation, translation=pose.translation, expression=expression)


def identity_pose(batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> HeadPose:
    """Frontal, centred head: zero angles and zero translation."""
    zeros = torch.zeros(batch, 3, device=device, dtype=dtype)
    return HeadPose(rotation=zeros, translation=zeros.clone())
