"""The pretrained, frozen head-pose network of E_mtn (DESIGN.md §4.1).

MegaPortraits: "we use a pre-trained network to estimate head rotation"; its first author's follow-up code
has a frozen ResNet-18 regressing scale, rotation and translation at 128×128. No such network can be
downloaded here, so this one is pretrained by `megalive-train head-pose` on SyntheticHeads renders with
their exact pose labels (and on prepared real video with poses solved from mediapipe's face mesh), then
frozen inside the teacher (``BaseConfig.pose_source = "pretrained"``).

It answers in the renderer's (SyntheticHeads') convention, ``ImagePose``: the camera is orthographic along
-z with x right and y up over an image spanning [-1, 1]; a head point p lands at s·R·p + (tx, ty, 0) with
R = Rz(roll)·Ry(yaw)·Rx(-pitch) (standard rotation matrices: pitch > 0 looks up). Six numbers, since an
orthographic picture shows no depth translation and one scale (the follow-up code's 9 outputs spend three
on those).

``volume_pose`` turns that into the warps' pose (warping.py). The volume's axes are the image's columns (x,
right), rows (y, down) and depth (z): F = diag(1, -1, -1) maps camera to volume coordinates (a half-turn about
x, so it keeps handedness). A head point in the volume is then F(s·R·p + t) = (s/s₀)·(F R F)·(s₀ F p) + F t,
where s₀ F p is the point in the canonical volume (the frontal head at the default size s₀). F R F =
Rz(-roll)·Ry(-yaw)·Rx(-pitch), which is warping.rotation_matrix of (-yaw, -pitch, -roll); the warps' relative
scale is s/s₀ and their translation (tx, -ty, 0). ``tests/models/test_head_pose.py`` checks this against the
renderer's own projected landmarks.

Shapes (cpu preset): image B×3×H×W -> resized B×3×128×128 -> trunk B×128×4×4 -> pooled B×128 -> B×6
(standardised) -> yaw, pitch, roll, tx, ty, scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.megaportraits.teacher_blocks import ResNetTrunk

# The head's size in the canonical volume: SyntheticHeads' default scale (skull half-height in image
# half-heights; models/data/heads/params.py DEFAULT_SCALE, checked equal by the tests).
CANONICAL_SCALE = 0.68

# Label statistics the network's outputs are standardised by (SyntheticHeads' random motions: yaw, pitch and
# roll uniform in ±0.45, ±0.3 and ±0.25 rad, tx and ty in ±0.08, scale in [0.62, 0.74]); fixed, so that a
# checkpoint's meaning does not depend on its training set.
LABEL_MEAN = (0.0, 0.0, 0.0, 0.0, 0.0, CANONICAL_SCALE)
LABEL_SCALE = (0.26, 0.17, 0.14, 0.046, 0.046, 0.035)
LABEL_NAMES = ("yaw", "pitch", "roll", "tx", "ty", "scale")


@dataclass(frozen=True)
class HeadPoseConfig:
    resolution: int  # the image is resized to this before the trunk (the follow-up code: 128)
    stem: int  # ResNet trunk: stem width, stage widths, basic blocks per stage
    widths: tuple[int, ...]
    blocks: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.resolution < 32 or self.resolution & (self.resolution - 1):
            raise ValueError(f"head-pose resolution must be a power of two ≥ 32, got {self.resolution}")
        if not self.widths or len(self.widths) != len(self.blocks) or min(self.blocks) < 1:
            raise ValueError("head-pose widths and blocks need the same, non-zero length and counts ≥ 1")


HEAD_POSE_PRESETS: dict[str, HeadPoseConfig] = {
    "tiny": HeadPoseConfig(resolution=64, stem=8, widths=(8, 16), blocks=(1, 1)),  # tests
    "cpu": HeadPoseConfig(resolution=128, stem=16, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)),  # two cores
    "resnet18": HeadPoseConfig(resolution=128, stem=64, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),  # the follow-up code's
}


def head_pose_config(preset: str) -> HeadPoseConfig:
    if preset not in HEAD_POSE_PRESETS:
        raise ValueError(f"unknown head-pose preset {preset!r} (known: {', '.join(HEAD_POSE_PRESETS)})")
    return HEAD_POSE_PRESETS[preset]


class HeadPose(NamedTuple):
    """A head pose in the warps' convention (motion.py, warping.py)."""

    rotation: Tensor  # B×3: yaw, pitch, roll in radians
    translation: Tensor  # B×3: x, y, z in normalised volume units
    scale: Tensor  # B×1: head size relative to the canonical head


class ImagePose(NamedTuple):
    """A head pose in the renderer's convention (module docstring)."""

    rotation: Tensor  # B×3: yaw, pitch, roll in radians
    translation: Tensor  # B×2: tx (right), ty (up) in image half-widths
    scale: Tensor  # B: skull half-height in image half-heights

    def as_labels(self) -> Tensor:
        """B×6 in LABEL_NAMES order."""
        return torch.cat([self.rotation, self.translation, self.scale.unsqueeze(1)], dim=1)

    @classmethod
    def from_labels(cls, labels: Tensor) -> ImagePose:
        """B×6 in LABEL_NAMES order."""
        rotation, translation, scale = labels.split([3, 2, 1], dim=1)
        return cls(rotation=rotation, translation=translation, scale=scale.squeeze(1))


def volume_pose(pose: ImagePose) -> HeadPose:
    """The warps' pose of a head seen in this pose (module docstring): rotation (-yaw, -pitch, -roll),
    translation (tx, -ty, 0), scale s/s₀."""
    tx, ty = pose.translation.unbind(dim=1)
    translation = torch.stack([tx, -ty, torch.zeros_like(tx)], dim=1)  # B×3
    return HeadPose(rotation=-pose.rotation, translation=translation, scale=(pose.scale / CANONICAL_SCALE).unsqueeze(1))


class HeadPoseNetwork(nn.Module):
    """Image in [0, 1] -> ImagePose. Frozen inside the teacher: ``freeze`` turns off its gradients and keeps it
    in eval mode whatever the parent's mode."""

    def __init__(self, *, config: HeadPoseConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = ResNetTrunk(in_channels=3, stem_channels=config.stem, widths=config.widths, blocks=config.blocks, bottleneck=False)
        self.head = nn.Linear(config.widths[-1], len(LABEL_NAMES))
        self.register_buffer("label_mean", torch.tensor(LABEL_MEAN), persistent=False)
        self.register_buffer("label_scale", torch.tensor(LABEL_SCALE), persistent=False)
        self.frozen = False

    def freeze(self) -> HeadPoseNetwork:
        self.frozen = True
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> HeadPoseNetwork:
        return super().train(mode and not self.frozen)

    def standardised(self, image: Tensor) -> Tensor:
        """image B×3×H×W in [0, 1] -> B×6 labels standardised by LABEL_MEAN and LABEL_SCALE."""
        x = image * 2 - 1
        size = self.config.resolution
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)  # -> B×3×r×r
        return self.head(self.trunk(x).mean(dim=(2, 3)))  # B×w×h×w -> B×w -> B×6

    def forward(self, image: Tensor) -> ImagePose:
        return ImagePose.from_labels(self.standardised(image) * self.label_scale + self.label_mean)

    def standardise(self, labels: Tensor) -> Tensor:
        """B×6 labels -> their standardised values (the training target of ``standardised``)."""
        return (labels - self.label_mean) / self.label_scale
