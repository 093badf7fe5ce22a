"""The student's training objective: what makes its faces sharp and its eyes and mouths read.

Per step, for the student's output (rgb, alpha) against the target (rgb, alpha, 68 landmarks):

    l1          |rgb - target| averaged over the frame, each pixel weighted 1 + region_weight inside the
                eye and mouth boxes (models/face_regions.py; boxes from the target's landmarks)
    ssim        1 - SSIM(rgb, target)
    mask        |alpha - target alpha|
    perceptual  perceptual (EfficientNet-Lite0) distance: unit-normalised feature pyramid, 5 levels
    face        face (dlib ResNet): 1 - cosine of the descriptors of output and target, both aligned by the
                target's landmarks (the output must keep the target's face, as a face recogniser sees it)
    adversarial hinge on a multi-scale PatchGAN (models/losses.py), which sees the full frame
    matching    L1 between the discriminator's features of output and target (feature matching)

MegaPortraits weighs its VGG19 perceptual term λ 20 and its face term λ 4; here the perceptual network is
EfficientNet-Lite0, whose distance is on another scale (unit feature vectors: 0 for the same image, about 0.2
for a blur of σ 1 px, 2 at most), so its λ is set by measurement and recorded with the run.

The two pretrained networks are loaded from pinned local files (models/nets/weights.py). A missing one is
refused unless the run allows it (``allow_missing_nets``), and the run's config records which were active:
a silently missing term would change the model.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import Tensor, nn

from models.face_regions import region_masks
from models.losses import (
    DiscriminatorConfig,
    MultiScaleDiscriminator,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from models.nets.face_descriptor import FaceDescriptor, align_face_chips
from models.nets.perceptual import PerceptualFeatures
from models.nets.weights import FACE_NETWORK, PERCEPTUAL_NETWORK, network_problem
from models.training.common import TrainingError
from models.training.objective_weights import ObjectiveWeights

# The discriminators the student can train against, two scales each: "small" costs a third of "large" on the CPU.
STUDENT_DISCRIMINATORS: dict[str, DiscriminatorConfig] = {
    "small": DiscriminatorConfig(scales=2, channels=(16, 32, 64, 128)),
    "large": DiscriminatorConfig(scales=2, channels=(32, 64, 128, 256)),
}


class LossNetworks(NamedTuple):
    perceptual: PerceptualFeatures | None  # None: absent (weight 0, or allowed missing)
    face: FaceDescriptor | None
    status: dict[str, str]  # network name -> "active", "off (weight 0)" or "absent: <why>"


def load_loss_networks(weights: ObjectiveWeights, *, allow_missing: bool) -> LossNetworks:
    """The pretrained networks the weights ask for; a missing one raises TrainingError (one line naming the file
    and its checksum) unless ``allow_missing``, when the term is dropped and the status says so."""
    status: dict[str, str] = {}
    loaded: dict[str, nn.Module | None] = {}
    for network, weight, make in (
        (PERCEPTUAL_NETWORK, weights.perceptual, PerceptualFeatures),
        (FACE_NETWORK, weights.face, FaceDescriptor),
    ):
        if weight == 0:
            status[network], loaded[network] = "off (weight 0)", None
            continue
        problem = network_problem(network)
        if problem is not None:
            if not allow_missing:
                raise TrainingError(f"{network} is needed by its loss term and cannot be loaded: {problem} (or --allow-missing-nets)")
            status[network], loaded[network] = f"absent: {problem}", None
            continue
        status[network], loaded[network] = "active", make()
    perceptual, face = loaded[PERCEPTUAL_NETWORK], loaded[FACE_NETWORK]
    assert perceptual is None or isinstance(perceptual, PerceptualFeatures)
    assert face is None or isinstance(face, FaceDescriptor)
    return LossNetworks(perceptual=perceptual, face=face, status=status)


class ObjectiveTerms(NamedTuple):
    total: Tensor  # the generator's loss: Σ weight · term
    terms: dict[str, Tensor]  # each term unweighted (those that ran)

    def as_floats(self) -> dict[str, float]:
        return {"total": float(self.total.detach()), **{name: float(value.detach()) for name, value in self.terms.items()}}


def region_weighted_l1(rgb: Tensor, target_rgb: Tensor, landmarks: Tensor, *, region_weight: float) -> Tensor:
    """Mean |rgb - target| with pixels inside the eye and mouth boxes weighted 1 + region_weight.
    rgb, target_rgb: B×3×H×W; landmarks: B×68×2 in pixels."""
    difference = (rgb - target_rgb).abs()  # B×3×H×W
    if region_weight == 0:
        return difference.mean()
    regions = region_masks(landmarks, size=rgb.shape[-1]).amax(dim=1, keepdim=True)  # B×R×H×W -> B×1×H×W
    return (difference * (1 + region_weight * regions.to(difference))).mean()


class StudentObjective(nn.Module):
    """The generator's terms and the discriminator's loss; holds the (trained) discriminator and the frozen nets."""

    def __init__(
        self, *, weights: ObjectiveWeights, networks: LossNetworks, discriminator: DiscriminatorConfig, perceptual_size: int = 0
    ) -> None:
        super().__init__()
        self.weights = weights
        self.perceptual_size = perceptual_size  # frames area-resized to this side before the perceptual network (0: as they are)
        self.perceptual = networks.perceptual
        self.face = networks.face
        self.discriminator = MultiScaleDiscriminator(config=discriminator) if self.uses_discriminator else None

    @property
    def uses_discriminator(self) -> bool:
        return self.weights.adversarial > 0 or self.weights.feature_matching > 0

    def generator_terms(self, rgb: Tensor, alpha: Tensor, target_rgb: Tensor, target_alpha: Tensor, landmarks: Tensor) -> ObjectiveTerms:
        """rgb, target_rgb: B×3×H×W; alpha, target_alpha: B×1×H×W; landmarks: B×68×2, the target's, in pixels
        (pixel i spans [i, i+1))."""
        weights = self.weights
        terms = {
            "l1": region_weighted_l1(rgb, target_rgb, landmarks, region_weight=weights.region),
            "ssim": 1 - ssim(rgb.float(), target_rgb.float(), data_range=1.0, size_average=True),
            "mask": F.l1_loss(alpha, target_alpha),
        }
        total = weights.l1 * terms["l1"] + weights.ssim * terms["ssim"] + weights.mask * terms["mask"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual.perceptual_distance(*self._perceptual_input(rgb, target_rgb)).mean()
            total = total + weights.perceptual * terms["perceptual"]
        if self.face is not None:
            # In float32 even under autocast: the alignment solves a small least-squares fit and resamples.
            with torch.autocast(device_type=rgb.device.type, enabled=False):
                # dlib's chips put pixel centres on integers; ours are at i + 0.5.
                pair_landmarks = torch.cat([landmarks, landmarks]).float() - 0.5
                chips = align_face_chips(torch.cat([rgb, target_rgb]).float(), pair_landmarks)  # 2B×3×150×150
                output_descriptor, target_descriptor = self.face(chips).chunk(2)  # B×128 each
            terms["face"] = (1 - F.cosine_similarity(output_descriptor, target_descriptor.detach(), dim=1)).mean()
            total = total + weights.face * terms["face"]
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)  # the generator's step does not train it
            judged = self.discriminator(torch.cat([target_rgb, rgb]))
            self.discriminator.requires_grad_(True)
            half = rgb.shape[0]
            fake_logits = [logits[half:] for logits in judged.logits]
            real_features = [[feature[:half].detach() for feature in scale] for scale in judged.features]
            fake_features = [[feature[half:] for feature in scale] for scale in judged.features]
            terms["adversarial"] = hinge_generator_loss(fake_logits)
            terms["matching"] = feature_matching_loss(real_features, fake_features)
            total = total + weights.adversarial * terms["adversarial"] + weights.feature_matching * terms["matching"]
        return ObjectiveTerms(total=total, terms=terms)

    def _perceptual_input(self, rgb: Tensor, target_rgb: Tensor) -> tuple[Tensor, Tensor]:
        if self.perceptual_size in (0, rgb.shape[-1]):
            return rgb, target_rgb
        size = (self.perceptual_size, self.perceptual_size)
        return F.interpolate(rgb, size=size, mode="area"), F.interpolate(target_rgb, size=size, mode="area")  # B×3×s×s

    def discriminator_loss(self, rgb: Tensor, target_rgb: Tensor) -> Tensor:
        """The discriminator's hinge loss on targets (real) and the detached outputs (fake)."""
        assert self.discriminator is not None
        half = rgb.shape[0]
        judged = self.discriminator(torch.cat([target_rgb, rgb.detach()]))
        return hinge_discriminator_loss([logits[:half] for logits in judged.logits], [logits[half:] for logits in judged.logits])

    def describe(self, networks: LossNetworks) -> dict[str, object]:
        """What ran, for config.json."""
        return {
            "weights": asdict(self.weights),
            "networks": networks.status,
            "discriminator": None if self.discriminator is None else asdict(self.discriminator.config),
            "perceptual_size": self.perceptual_size or "as trained",
        }
