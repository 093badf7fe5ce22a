"""E_mtn, the motion encoder of the MegaPortraits base model (DESIGN.md §4.1).

From an image (source or driver) it computes the head pose — rotation (yaw, pitch, roll) and
translation t — and an expression vector z (paper: 512; EMOPortraits: 128 with dropout).

The paper takes the pose from a pretrained, frozen head-pose network; the config chooses
(``BaseConfig.pose_source``):
- ``"pretrained"``: the paper's way: a frozen head-pose network (head_pose.py, pretrained by
  `megalive-train head-pose`) gives the pose, the trunk here only the expression;
- ``"learned"``: a pose head on the same trunk, trained end to end with the rest of the model (the
  project's first teacher: it never learned to turn the head);
- ``"given"``: no pose head; the caller passes the pose to ``forward`` (tests).

The expression may also read the eyes and the mouth up close (``BaseConfig.feature_crops``, this project's
addition; it needs the frozen head-pose network): three crops (each eye, the mouth) are placed where that
network's pose puts the eyes and mouth of an average neutral SyntheticHeads face (``mean_feature_points``), turned
and scaled with the head, and read by small branches (models/face_crops.py, the benchmark regressor's crop
reader) whose features join the trunk's before z. Without them the cpu128 teacher's z hardly saw the jaw:
driving a source with the same head closed and with jawOpen 0.9 moved z by 5 % and the output's mouth by 0.002.

Pose conventions (used by ``warping.py``): angles in radians, R = Rz(roll)·Ry(yaw)·Rx(pitch) about the
volume's z (depth), y (image rows) and x (image columns) axes; translation in normalised volume units
(the volume spans [-1, 1] on every axis, so one voxel along x is 2/S); scale relative to the canonical
head (1: the canonical size). head_pose.volume_pose maps the renderer's convention onto this one.

Shapes (ResNet-18 trunk, ``paper512``): image B×3×512×512 -> resized B×3×256×256 -> trunk
B×512×8×8 -> pooled B×512 -> rotation B×3, translation B×3, z B×512. With feature crops (cpu128): eyes
B×3×24×32 and mouth B×3×32×32 from the 128 px image -> B×128 each -> [pooled B×256, crops B×384] -> z B×128.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.data.heads import mean_feature_points, project_head_points, sample_identities
from models.face_crops import CropBranch, FaceFrame, feature_crops
from models.megaportraits.head_pose import HeadPose, HeadPoseConfig, HeadPoseNetwork, ImagePose, volume_pose
from models.megaportraits.teacher_blocks import ResNetTrunk

PoseSource = Literal["learned", "given", "pretrained"]
POSE_SOURCES = ("learned", "given", "pretrained")


class Motion(NamedTuple):
    rotation: Tensor  # B×3: yaw, pitch, roll in radians
    translation: Tensor  # B×3: x, y, z in normalised volume units
    scale: Tensor  # B×1: head size relative to the canonical head
    expression: Tensor  # z: B×Z

    @property
    def pose(self) -> HeadPose:
        return HeadPose(rotation=self.rotation, translation=self.translation, scale=self.scale)


# The average face the crops are placed on: this many identities of the SyntheticHeads prior, from this seed.
ANCHOR_IDENTITIES, ANCHOR_SEED = 256, 0


class FeatureCropReader(nn.Module):
    """Image + its head pose -> features of the eyes' and the mouth's crops (B×3·features).

    Crop sizes are the benchmark regressor's at 128 px (eyes 24×32, mouth 32×32), scaled with ``resolution``
    (the image is area-resized to it first)."""

    def __init__(self, *, resolution: int, stem: int = 24, channels: tuple[int, ...] = (48, 64), features: int = 128) -> None:
        super().__init__()
        factor = resolution / 128
        self.resolution = resolution
        self.eye_size = (round(24 * factor), round(32 * factor))
        self.mouth_size = (round(32 * factor), round(32 * factor))
        anchors = mean_feature_points(sample_identities(ANCHOR_IDENTITIES, generator=torch.Generator().manual_seed(ANCHOR_SEED)))
        self.register_buffer("anchors", anchors.T.contiguous())  # 3×3: (x, y, z) × (left eye, right eye, mouth), head space
        self.eye_branch = CropBranch(size=self.eye_size, stem=stem, channels=channels, features=features)  # both eyes
        self.mouth_branch = CropBranch(size=self.mouth_size, stem=stem, channels=channels, features=features)
        self.features = 3 * features

    def frame(self, pose: ImagePose, *, size: int) -> FaceFrame:
        """Where ``pose`` puts the average face's eyes and mouth in a size×size image."""
        anchors = self.anchors.expand(pose.scale.shape[0], -1, -1)  # 3×3 -> B×3×3 (shape, not len: traced batch)
        points = project_head_points(
            anchors, rotation=pose.rotation, translation=pose.translation, scale=pose.scale, resolution=size
        )  # B×3×2
        return FaceFrame.from_points(left_eye=points[:, 0], right_eye=points[:, 1], mouth=points[:, 2])

    def forward(self, image: Tensor, pose: ImagePose) -> Tensor:
        """image: B×3×S×S in [0, 1]; pose: the frozen network's, in the renderer's convention -> B×3·features."""
        crops = feature_crops(
            image,
            self.frame(pose, size=image.shape[-1]),
            crop_resolution=self.resolution,
            eye_size=self.eye_size,
            mouth_size=self.mouth_size,
        )
        eyes = self.eye_branch(torch.cat([crops.left_eye, crops.right_eye])).chunk(2)  # one pass for both: 2B×f -> B×f, B×f
        return torch.cat([*eyes, self.mouth_branch(crops.mouth)], dim=1)  # B×3f


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
        head_pose: HeadPoseConfig | None = None,
        feature_crops: bool = False,
    ) -> None:
        super().__init__()
        if pose_source not in POSE_SOURCES:
            raise ValueError(f"pose_source must be one of {', '.join(POSE_SOURCES)}, got {pose_source!r}")
        if (pose_source == "pretrained") != (head_pose is not None):
            raise ValueError("a head-pose network config goes with pose_source 'pretrained', and only with it")
        if feature_crops and head_pose is None:
            raise ValueError("feature crops are placed by the frozen head-pose network: they need pose_source 'pretrained'")
        self.input_resolution = input_resolution
        self.pose_source = pose_source
        self.trunk = ResNetTrunk(in_channels=3, stem_channels=stem_channels, widths=widths, blocks=blocks, bottleneck=False)
        self.crops = FeatureCropReader(resolution=input_resolution) if feature_crops else None
        self.expression = nn.Linear(widths[-1] + (0 if self.crops is None else self.crops.features), expression_dim)
        self.dropout = nn.Dropout(expression_dropout)
        self.pose: nn.Linear | None = None
        if pose_source == "learned":
            # Zero-initialised: every image starts at the identity pose, so early training does not
            # fight random rotations (its weights still get gradients from the first step).
            self.pose = nn.Linear(widths[-1], 6)
            nn.init.zeros_(self.pose.weight)
            nn.init.zeros_(self.pose.bias)
        # Frozen from the start; its weights come from a `megalive-train head-pose` checkpoint (load_head_pose).
        self.head_pose = None if head_pose is None else HeadPoseNetwork(config=head_pose).freeze()

    def forward(self, image: Tensor, *, pose: HeadPose | None = None) -> Motion:
        """image: B×3×H×W in [0, 1]; ``pose`` is required with pose_source "given", refused otherwise."""
        if pose is None and self.pose_source == "given":
            raise ValueError("pose_source is 'given': pass the head pose")
        if pose is not None and self.pose_source != "given":
            raise ValueError(f"pose_source is {self.pose_source!r}: E_mtn finds the pose; do not pass one")
        x = image * 2 - 1  # [0, 1] -> [-1, 1]
        if x.shape[-1] != self.input_resolution or x.shape[-2] != self.input_resolution:
            x = F.interpolate(x, size=(self.input_resolution, self.input_resolution), mode="bilinear", align_corners=False, antialias=True)
        features = self.trunk(x).mean(dim=(2, 3))  # B×w×h×w' -> B×w
        if self.pose is not None:
            rotation, translation = self.pose(features).split([3, 3], dim=1)  # B×6 -> B×3, B×3
            expression = self.dropout(self.expression(features))  # -> B×Z
            return Motion(rotation=rotation, translation=translation, scale=torch.ones_like(rotation[:, :1]), expression=expression)
        if self.head_pose is not None:
            image_pose = self.head_pose(image)
            if self.crops is not None:
                features = torch.cat([features, self.crops(image, image_pose)], dim=1)  # B×w -> B×(w + 3f)
            pose = volume_pose(image_pose)
        expression = self.dropout(self.expression(features))  # -> B×Z
        assert pose is not None
        return Motion(rotation=pose.rotation, translation=pose.translation, scale=pose.scale, expression=expression)


def identity_pose(batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> HeadPose:
    """Frontal, centred head at the canonical size: zero angles, zero translation, scale 1."""
    zeros = torch.zeros(batch, 3, device=device, dtype=dtype)
    return HeadPose(rotation=zeros, translation=zeros.clone(), scale=torch.ones(batch, 1, device=device, dtype=dtype))
