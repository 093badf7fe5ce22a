"""Losses of the MegaPortraits base model (DESIGN.md §4.1), usable by the other networks too.

- The paper's perceptual terms (VGG19 λ 20, a face-recognition network λ 4, a gaze network λ 5) use
  networks that cannot be loaded here: the trainers use EfficientNet-Lite0 and dlib's ResNet in their
  place (models/nets/, via models/training/student_objective.load_loss_networks), and no gaze term.
- Multi-scale PatchGAN discriminator (spectral norm) with the hinge loss (λ=1) and feature matching
  (λ=40).
- The cycle / contrastive loss on motion descriptors of cross-reenacted outputs (λ=2): descriptors of
  two outputs with the same driver are pulled together, those with another video's driver pushed
  apart; cosine similarity with scale s=5 and margin m=0.2, written with logsumexp.
- Foreground (masked) variants: ``foreground`` masks images before a network sees them,
  ``masked_l1`` averages over the mask only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class LossWeights:
    """λ of the adversarial terms and the contrastive loss (DESIGN.md §4.1, from the paper)."""

    adversarial: float = 1.0
    feature_matching: float = 40.0
    cycle: float = 2.0


@dataclass(frozen=True)
class LossConfig:
    weights: LossWeights = field(default_factory=LossWeights)
    cycle_scale: float = 5.0  # s
    cycle_margin: float = 0.2  # m


# -- masks ------------------------------------------------------------------------------------------


def foreground(image: Tensor, mask: Tensor | None) -> Tensor:
    """B×C×H×W image times a B×1×H×W mask in [0, 1] (background -> 0); the image itself without a mask."""
    return image if mask is None else image * mask


def masked_l1(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean |prediction - target| over the foreground (the plain mean without a mask)."""
    if mask is None:
        return F.l1_loss(prediction, target)
    weight = mask.expand_as(prediction)  # B×1×H×W -> B×C×H×W
    return ((prediction - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)


# -- multi-scale PatchGAN ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscriminatorConfig:
    scales: int = 2  # the image, then average-pooled ×1/2 per further scale
    channels: tuple[int, ...] = (64, 128, 256, 512)  # all but the last at stride 2 (pix2pixHD's PatchGAN)
    in_channels: int = 3


class DiscriminatorOutput(NamedTuple):
    logits: list[Tensor]  # per scale: B×1×h×w patch logits
    features: list[list[Tensor]]  # per scale: every intermediate activation (for feature matching)


class PatchGAN(nn.Module):
    """4×4 convs with spectral norm and LeakyReLU(0.2): channels[:-1] at stride 2, channels[-1] at
    stride 1, then a stride-1 conv to one logit per patch. B×in×H×W -> B×1×(H/2^(n-1) - 2)×(W/2^(n-1) - 2)
    for n = len(channels) and H divisible by 2^(n-1)."""

    def __init__(self, *, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers = []
        previous = in_channels
        for index, width in enumerate(channels):
            stride = 2 if index < len(channels) - 1 else 1
            layers.append(spectral_norm(nn.Conv2d(previous, width, 4, stride=stride, padding=1)))
            previous = width
        self.layers = nn.ModuleList(layers)
        self.out = spectral_norm(nn.Conv2d(previous, 1, 4, stride=1, padding=1))

    def forward(self, image: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = []
        x = image
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            features.append(x)
        return self.out(x), features


class MultiScaleDiscriminator(nn.Module):
    """One PatchGAN per scale; scale i sees the input average-pooled i times by 2."""

    def __init__(self, *, config: DiscriminatorConfig) -> None:
        super().__init__()
        if config.scales < 1 or not config.channels:
            raise ValueError("a discriminator needs at least one scale and one layer")
        self.config = config
        self.scales = nn.ModuleList(PatchGAN(in_channels=config.in_channels, channels=config.channels) for _ in range(config.scales))

    def forward(self, image: Tensor) -> DiscriminatorOutput:
        """image: B×in×H×W in [0, 1]."""
        logits, features = [], []
        x = image * 2 - 1  # [0, 1] -> [-1, 1]
        for index, discriminator in enumerate(self.scales):
            if index > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)  # B×in×h×w -> B×in×h/2×w/2
            scale_logits, scale_features = discriminator(x)
            logits.append(scale_logits)
            features.append(scale_features)
        return DiscriminatorOutput(logits=logits, features=features)


def hinge_discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """Mean over scales of E[relu(1 - D(real))] + E[relu(1 + D(fake))]: 0 once real ≥ 1 and fake ≤ -1."""
    per_scale = [F.relu(1 - real).mean() + F.relu(1 + fake).mean() for real, fake in zip(real_logits, fake_logits, strict=True)]
    return torch.stack(per_scale).mean()


def hinge_generator_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """Mean over scales of -E[D(fake)]: falls as the discriminator rates the fakes as more real."""
    return torch.stack([-fake.mean() for fake in fake_logits]).mean()


def feature_matching_loss(real_features: Sequence[Sequence[Tensor]], fake_features: Sequence[Sequence[Tensor]]) -> Tensor:
    """Mean L1 between the discriminator's activations on real (detached) and fake images, over all
    layers and scales."""
    terms = [
        F.l1_loss(fake, real.detach())
        for real_scale, fake_scale in zip(real_features, fake_features, strict=True)
        for real, fake in zip(real_scale, fake_scale, strict=True)
    ]
    return torch.stack(terms).mean()


# -- cycle / contrastive loss on motion descriptors -------------------------------------------------


# -- per-sample weighted terms: a batch element without a target (weight 0) drops out of them ----------------------


def split_discriminator_output(
    output: DiscriminatorOutput, half: int
) -> tuple[list[Tensor], list[Tensor], list[list[Tensor]], list[list[Tensor]]]:
    """A discriminator pass over cat[real, fake] -> real logits, fake logits, real features, fake features."""
    real_logits = [logits[:half] for logits in output.logits]
    fake_logits = [logits[half:] for logits in output.logits]
    real_features = [[feature[:half] for feature in scale] for scale in output.features]
    fake_features = [[feature[half:] for feature in scale] for scale in output.features]
    return real_logits, fake_logits, real_features, fake_features


def weighted_mean(per_sample: Tensor, weight: Tensor) -> Tensor:
    """Σ w·x / Σ w over the batch (x: per-sample values, N; w: N)."""
    return (per_sample * weight).sum() / weight.sum().clamp_min(1e-8)


def per_sample_l1(a: Tensor, b: Tensor) -> Tensor:
    """N×… -> N: mean |a - b| per sample."""
    return (a - b).abs().flatten(1).mean(dim=1)


def weighted_feature_matching_loss(real: list[list[Tensor]], fake: list[list[Tensor]], weight: Tensor) -> Tensor:
    """feature_matching_loss with each sample's L1 weighted by ``weight`` (N): mean over layers and scales."""
    terms = [
        weighted_mean(per_sample_l1(f, r.detach()), weight)
        for real_scale, fake_scale in zip(real, fake, strict=True)
        for r, f in zip(real_scale, fake_scale, strict=True)
    ]
    return torch.stack(terms).mean()


def weighted_hinge_discriminator_loss(real_logits: list[Tensor], fake_logits: list[Tensor], weight: Tensor) -> Tensor:
    """hinge_discriminator_loss with the real side weighted per sample (weight 0: not shown as real)."""
    per_scale = [
        weighted_mean(F.relu(1 - real).flatten(1).mean(dim=1), weight) + F.relu(1 + fake).mean()
        for real, fake in zip(real_logits, fake_logits, strict=True)
    ]
    return torch.stack(per_scale).mean()


def cycle_contrastive_loss(anchor: Tensor, positive: Tensor, negatives: Tensor, *, scale: float = 5.0, margin: float = 0.2) -> Tensor:
    """Large-margin cosine contrastive loss (as CosFace), mean over the batch:

        L = -log( e^{s(cos(a, p) - m)} / (e^{s(cos(a, p) - m)} + Σ_n e^{s·cos(a, n)}) )
          = logsumexp([s(cos(a, p) - m), s·cos(a, n_1), …]) - s(cos(a, p) - m)

    anchor, positive: B×Z motion descriptors that share a driver (e.g. E_mtn's z of a cross-reenacted
    output x_{s*→d} and of the driver d itself); negatives: B×N×Z, descriptors from another video's
    driver d* (N may be 0: then L = 0).
    Finite for identical, opposite and zero descriptors (cosine uses a clamped norm).
    """
    anchor_unit = F.normalize(anchor, dim=-1)  # B×Z
    positive_cos = (anchor_unit * F.normalize(positive, dim=-1)).sum(dim=-1)  # B
    negative_cos = torch.einsum("bz,bnz->bn", anchor_unit, F.normalize(negatives, dim=-1))  # B×N
    positive_logit = scale * (positive_cos - margin)  # B
    logits = torch.cat([positive_logit.unsqueeze(1), scale * negative_cos], dim=1)  # B×(1+N)
    return (torch.logsumexp(logits, dim=1) - positive_logit).mean()


def other_drivers(descriptors: Tensor) -> Tensor:
    """B×Z -> B×(B-1)×Z: for each sample, the descriptors of the batch's other samples (negatives
    when every sample of the batch comes from another video)."""
    batch = descriptors.shape[0]
    keep = ~torch.eye(batch, dtype=torch.bool, device=descriptors.device)  # B×B, False on the diagonal
    others = torch.arange(batch, device=descriptors.device).expand(batch, batch)[keep].view(batch, batch - 1)  # B×(B-1)
    return descriptors[others]  # -> B×(B-1)×Z
