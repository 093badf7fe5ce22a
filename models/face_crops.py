"""Eye and mouth crops in a face's own frame, and the small network that reads one.

Two readers share them: the benchmark's parameter regressor (models/nets/parameter_regressor.py), which places
the crops by landmarks, and the teacher's E_mtn with ``BaseConfig.feature_crops`` (models/megaportraits/motion.py),
which places them where its frozen head-pose network puts the head's eyes and mouth. A whole face resized to
64-128 px shows a jaw drop as a few pixels; a crop centred on the mouth shows it across its rows.

Each crop is centred on its feature, turned by the line between the eyes and scaled by their distance; the right eye
is mirrored so that both eyes share one branch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.landmarks import LEFT_EYE_POINTS, MOUTH_POINTS, RIGHT_EYE_POINTS
from models.blocks import ConvNormAct, DownBlock, resize_square

# Each crop in the face frame, in inter-ocular distances: (half width, half height) and its centre's offset
# below the feature's centre (negative: above). Measured on 512 random renders: a brow's points lie 0.08-0.55
# above its eye's centre and the eye's 0.25 above to 0.19 below; the mouth's points 0.34 above to 0.49 below
# their centre (jaw open), 0.48 to either side.
EYE_CROP = ((0.6, 0.45), -0.15)
MOUTH_CROP = ((0.6, 0.6), 0.075)


class FaceFrame(NamedTuple):
    """Where a face's features are, in pixels of its image: the crops are placed and turned by it."""

    left_eye: Tensor  # B×2, the image-left eye's centre (the mean of its 6 points)
    right_eye: Tensor  # B×2
    mouth: Tensor  # B×2, the mean of the 20 mouth points
    axis: Tensor  # B×2, unit vector from the left eye's centre to the right's
    spread: Tensor  # B, inter-ocular distance (pixels)

    @classmethod
    def from_points(cls, *, left_eye: Tensor, right_eye: Tensor, mouth: Tensor) -> FaceFrame:
        """The three centres (B×2 pixels each) -> the frame."""
        between = right_eye - left_eye
        spread = between.norm(dim=1).clamp_min(1e-3)  # B
        return cls(left_eye=left_eye, right_eye=right_eye, mouth=mouth, axis=between / spread[:, None], spread=spread)

    @classmethod
    def from_landmarks(cls, landmarks: Tensor) -> FaceFrame:
        """B×68×2 landmarks in pixels (pixel i spans [i, i+1)) -> the frame."""
        return cls.from_points(
            left_eye=landmarks[:, list(LEFT_EYE_POINTS)].mean(dim=1),
            right_eye=landmarks[:, list(RIGHT_EYE_POINTS)].mean(dim=1),
            mouth=landmarks[:, list(MOUTH_POINTS)].mean(dim=1),
        )

    def scaled(self, factor: float) -> FaceFrame:
        """The same frame in an image resized by ``factor``."""
        return self._replace(
            left_eye=self.left_eye * factor, right_eye=self.right_eye * factor, mouth=self.mouth * factor, spread=self.spread * factor
        )

    def perturbed(self, *, shift: float, scale: float, angle: float, generator: torch.Generator) -> FaceFrame:
        """Each face's frame moved (σ ``shift`` inter-ocular distances, each feature its own way), scaled (σ ``scale``,
        log) and turned (σ ``angle`` radians) at random: landmarks as a landmark detector would give them."""
        count = len(self.spread)

        def moved(point: Tensor) -> Tensor:
            return point + torch.randn(count, 2, generator=generator) * (shift * self.spread)[:, None]

        turn = torch.randn(count, generator=generator) * angle
        cos, sin = turn.cos(), turn.sin()
        axis = torch.stack([cos * self.axis[:, 0] - sin * self.axis[:, 1], sin * self.axis[:, 0] + cos * self.axis[:, 1]], dim=1)
        spread = self.spread * torch.exp(torch.randn(count, generator=generator) * scale)
        return FaceFrame(left_eye=moved(self.left_eye), right_eye=moved(self.right_eye), mouth=moved(self.mouth), axis=axis, spread=spread)


def sample_crop(
    image: Tensor, centre: Tensor, frame: FaceFrame, *, half_size: tuple[float, float], size: tuple[int, int], mirror: bool = False
) -> Tensor:
    """A B×3×h×w crop of B×3×S×S images (outside: white) around ``centre`` (B×2 pixels), turned with the frame's
    axis and ``half_size`` (half width, half height) inter-ocular distances large; ``mirror`` flips it left-right."""
    height, width = size
    across = (torch.arange(width, dtype=image.dtype, device=image.device) + 0.5) / width * 2 - 1  # w, pixel centres in [-1, 1]
    down = (torch.arange(height, dtype=image.dtype, device=image.device) + 0.5) / height * 2 - 1  # h
    if mirror:
        across = -across
    axis = frame.axis.to(image)  # B×2
    downward = torch.stack([-axis[:, 1], axis[:, 0]], dim=1)  # B×2: the axis turned 90°, y down
    step_across = axis * (half_size[0] * frame.spread.to(image))[:, None]  # B×2 pixels per unit of `across`
    step_down = downward * (half_size[1] * frame.spread.to(image))[:, None]
    points = (
        centre.to(image)[:, None, None, :]
        + across[None, None, :, None] * step_across[:, None, None, :]
        + down[None, :, None, None] * step_down[:, None, None, :]
    )  # B×h×w×2, pixels
    grid = points / image.shape[-1] * 2 - 1  # align_corners=False: -1 and 1 are the image's outer edges
    return F.grid_sample(image - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1  # white outside


class FeatureCrops(NamedTuple):
    left_eye: Tensor  # B×3×h×w
    right_eye: Tensor  # B×3×h×w, mirrored
    mouth: Tensor  # B×3×h'×w'


def feature_crops(
    image: Tensor, frame: FaceFrame, *, crop_resolution: int, eye_size: tuple[int, int], mouth_size: tuple[int, int]
) -> FeatureCrops:
    """The eyes' and the mouth's crops of B×3×S×S images (``frame`` in their pixels), sampled from the image
    area-resized to ``crop_resolution`` when it is larger (no aliasing)."""
    size = image.shape[-1]
    if size > crop_resolution:
        image = resize_square(image, crop_resolution)
        frame = frame.scaled(crop_resolution / size)
    (eye_half, eye_lower), (mouth_half, mouth_lower) = EYE_CROP, MOUTH_CROP
    downward = torch.stack([-frame.axis[:, 1], frame.axis[:, 0]], dim=1)  # B×2

    def centre(point: Tensor, lower: float) -> Tensor:
        return point + downward * (lower * frame.spread)[:, None]

    return FeatureCrops(
        left_eye=sample_crop(image, centre(frame.left_eye, eye_lower), frame, half_size=eye_half, size=eye_size),
        right_eye=sample_crop(image, centre(frame.right_eye, eye_lower), frame, half_size=eye_half, size=eye_size, mirror=True),
        mouth=sample_crop(image, centre(frame.mouth, mouth_lower), frame, half_size=mouth_half, size=mouth_size),
    )


class CropBranch(nn.Module):
    """B×3×h×w crop -> B×features: a stride-2 conv, stride-2 ResBlocks, then the flattened map through a linear layer
    (flattened, not pooled: where a lid or a lip is in the crop is the signal)."""

    def __init__(self, *, size: tuple[int, int], stem: int, channels: tuple[int, ...], features: int) -> None:
        super().__init__()
        widths = (stem, *channels)
        self.stem = ConvNormAct(in_channels=3, out_channels=stem, stride=2)
        self.trunk = nn.Sequential(*(DownBlock(in_channels=a, out_channels=b) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        height, width = size
        for _ in widths:  # each stride-2 layer: ⌈n / 2⌉
            height, width = (height + 1) // 2, (width + 1) // 2
        self.out = nn.Sequential(nn.Linear(channels[-1] * height * width, features), nn.ReLU())

    def forward(self, crop: Tensor) -> Tensor:
        features = self.trunk(self.stem(crop * 2 - 1))  # B×C×h'×w'
        return self.out(features.flatten(1))  # B×(C·h'·w') -> B×features
