"""Losses of the MegaPortraits base model (DESIGN.md §4.1), usable by the other networks too.

- Perceptual L1 over feature maps of frozen, pretrained networks: VGG19 (λ=20), a face-recognition
  network (λ=4) and a gaze network (λ=5). None can be downloaded here, so each is loaded from a
  local weights file the user gives (a plain tensor state dict, read with ``weights_only=True``);
  without a file the network is **absent**: it contributes nothing, and ``LossConfig.describe()``
  (saved with a run's config) and the log say so. A random network is never used in its place.
- Multi-scale PatchGAN discriminator (spectral norm) with the hinge loss (λ=1) and feature matching
  (λ=40).
- The cycle / contrastive loss on motion descriptors of cross-reenacted outputs (λ=2): descriptors of
  two outputs with the same driver are pulled together, those with another video's driver pushed
  apart; cosine similarity with scale s=5 and margin m=0.2, written with logsumexp.
- Foreground (masked) variants: ``foreground`` masks images before a network sees them,
  ``masked_l1`` averages over the mask only.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossWeights:
    """λ of every term (DESIGN.md §4.1, from the paper)."""

    vgg19: float = 20.0
    face_recognition: float = 4.0
    gaze: float = 5.0
    adversarial: float = 1.0
    feature_matching: float = 40.0
    cycle: float = 2.0


@dataclass(frozen=True)
class LossConfig:
    weights: LossWeights = field(default_factory=LossWeights)
    vgg19_file: str | None = None  # local state dict of torchvision's VGG19 ``features``; None = absent
    face_recognition_file: str | None = None  # local VGG-Face state dict in VGG16 ``features`` layout; None = absent
    gaze_file: str | None = None  # local gaze network state dict in VGG16 ``features`` layout; None = absent
    cycle_scale: float = 5.0  # s
    cycle_margin: float = 0.2  # m

    def weights_file(self, network: str) -> str | None:
        return {"vgg19": self.vgg19_file, "face_recognition": self.face_recognition_file, "gaze": self.gaze_file}[network]

    def describe(self) -> dict[str, str]:
        """Which perceptual networks run, in words (record this with the run's config)."""
        status = {}
        for name in BACKBONES:
            path = self.weights_file(name)
            status[name] = "absent: no local weights file given" if path is None else f"active: weights from {path}"
        return status


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


# -- perceptual networks ----------------------------------------------------------------------------

VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG19_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """A VGG-style feature trunk: ``layout`` as torchvision's VGG configs (int = 3×3 conv + ReLU,
    "M" = 2×2 max-pool), so that a torchvision-layout ``features.{i}.weight`` state dict loads.
    ``taps``: indices in ``features`` after which feature maps are compared. Images in [0, 1] are
    normalised with ``mean`` and ``std`` first."""

    name: str
    layout: tuple[int | str, ...]
    taps: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


BACKBONES: dict[str, BackboneSpec] = {
    # torchvision's VGG19 ``features``; taps relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
    "vgg19": BackboneSpec(name="vgg19", layout=VGG19_LAYOUT, taps=(1, 6, 11, 20, 29), mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # VGG-Face (a VGG16) converted to torchvision's VGG16 ``features`` layout, RGB input with the
    # release's average image (129.1863, 104.7624, 93.5940 on 0-255) subtracted and no scaling.
    # Taps relu1_1 … relu5_1.
    "face_recognition": BackboneSpec(
        name="face_recognition", layout=VGG16_LAYOUT, taps=(1, 6, 11, 18, 25),
        mean=(129.1863 / 255, 104.7624 / 255, 93.5940 / 255), std=(1 / 255, 1 / 255, 1 / 255),
    ),
    # A gaze network whose trunk has torchvision's VGG16 ``features`` layout and ImageNet input
    # normalisation. Gaze networks usually read eye crops: pass crops to the loss when available.
    # Networks of another layout need their architecture added here.
    "gaze": BackboneSpec(name="gaze", layout=VGG16_LAYOUT, taps=(1, 6, 11, 18, 25), mean=IMAGENET_MEAN, std=IMAGENET_STD),
}  # fmt: skip


class WeightsFileError(ValueError):
    """A perceptual network's weights file cannot be used; the message is one line naming the file."""


class FeatureBackbone(nn.Module):
    """A frozen VGG-style trunk returning the feature maps at ``spec.taps``.

    Constructing one gives random weights: only ``load_backbone`` (a user's weights file) makes one
    that a loss may use.
    """

    def __init__(self, *, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        channels = 3
        for item in spec.layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureBackbone:
        return super().train(False)  # frozen: always in inference mode

    def forward(self, image: Tensor) -> list[Tensor]:
        """B×3×H×W in [0, 1] -> feature maps at the taps (finest first)."""
        x = (image - self.mean) / self.std
        taps, last = set(self.spec.taps), max(self.spec.taps)
        features = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in taps:
                features.append(x)
            if index == last:
                break
        return features


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_backbone(spec: BackboneSpec, path: str | Path) -> FeatureBackbone:
    """The network of ``spec`` with the weights in ``path`` (a tensor state dict in torchvision's
    ``features.{i}.weight`` / ``.bias`` layout; ``classifier.*`` entries are ignored).

    Raises WeightsFileError (one line, naming the file and the first offending tensor) when the file
    is missing, is not a plain state dict, or its tensors do not match the architecture."""
    path = Path(path)
    where = f"{spec.name} weights file {path}"
    if not path.is_file():
        raise WeightsFileError(f"{where} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise WeightsFileError(f"{where} is not a plain tensor state dict ({_first_line(error)})") from None
    if not isinstance(state, dict):
        raise WeightsFileError(f"{where} holds a {type(state).__name__}, not a state dict")
    backbone = FeatureBackbone(spec=spec)
    expected = backbone.state_dict()
    for key, tensor in expected.items():  # in layer order, so the first mismatch is reported
        if key not in state:
            raise WeightsFileError(f"{where}: tensor {key!r} is missing")
        found = state[key]
        if not isinstance(found, Tensor) or found.shape != tensor.shape:
            shape = tuple(found.shape) if isinstance(found, Tensor) else type(found).__name__
            raise WeightsFileError(f"{where}: tensor {key!r} has shape {shape}, expected {tuple(tensor.shape)}")
    unexpected = [key for key in state if key not in expected and not str(key).startswith("classifier.")]
    if unexpected:
        raise WeightsFileError(f"{where}: unexpected tensor {unexpected[0]!r} (not a {spec.name} layout)")
    backbone.load_state_dict({key: state[key] for key in expected})
    return backbone


class PerceptualTerms(NamedTuple):
    total: Tensor  # Σ λ_n · term_n over the active networks (0 when none is active)
    terms: dict[str, Tensor]  # per active network: mean over its taps of the feature L1


class PerceptualLoss(nn.Module):
    """Feature L1 of the active networks (those with a weights file in the config), weighted by λ."""

    def __init__(self, *, config: LossConfig) -> None:
        super().__init__()
        self.config = config
        self.networks = nn.ModuleDict()
        for name, spec in BACKBONES.items():
            path = config.weights_file(name)
            if path is not None:
                self.networks[name] = load_backbone(spec, path)
        for name, status in config.describe().items():
            logger.info("perceptual loss: %s %s", name, status)

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self.networks.keys())

    def forward(self, prediction: Tensor, target: Tensor, *, mask: Tensor | None = None) -> PerceptualTerms:
        """prediction, target: B×3×H×W in [0, 1]; ``mask`` B×1×H×W keeps the foreground only."""
        prediction, target = foreground(prediction, mask), foreground(target, mask)
        terms: dict[str, Tensor] = {}
        total = prediction.new_zeros(())
        for name, network in self.networks.items():
            with torch.no_grad():
                target_features = network(target)
            predicted_features = network(prediction)
            term = torch.stack([F.l1_loss(p, t) for p, t in zip(predicted_features, target_features)]).mean()
            terms[name] = term
            total = total + getattr(self.config.weights, name) * term
        return PerceptualTerms(total=total, terms=terms)


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
