"""The few-shot talking heads' building blocks (Zakharov et al. 2019, after BigGAN / SAGAN), shared by its embedder,
generator and discriminator: residual down and up blocks, adaptive instance normalisation whose scales and shifts come
from the person's embedding, and self-attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


def maybe_spectral(layer: nn.Module, *, spectral: bool) -> nn.Module:
    return spectral_norm(layer) if spectral else layer


class ResidualDown(nn.Module):
    """B×C×H×W -> B×C'×H/2×W/2: ReLU-conv-ReLU-conv then average pooling, plus a pooled 1×1 shortcut (BigGAN's
    discriminator block); instance norm after each conv in the generator (``norm``), none in the embedder and the
    discriminator, whose convs are spectrally normalised instead (``spectral``)."""

    def __init__(self, *, in_channels: int, out_channels: int, norm: bool, spectral: bool) -> None:
        super().__init__()
        self.first = maybe_spectral(nn.Conv2d(in_channels, out_channels, 3, padding=1), spectral=spectral)
        self.second = maybe_spectral(nn.Conv2d(out_channels, out_channels, 3, padding=1), spectral=spectral)
        self.shortcut = maybe_spectral(nn.Conv2d(in_channels, out_channels, 1), spectral=spectral)
        self.norm_first = nn.InstanceNorm2d(out_channels, affine=True) if norm else nn.Identity()
        self.norm_second = nn.InstanceNorm2d(out_channels, affine=True) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm_first(self.first(F.relu(x)))
        y = self.norm_second(self.second(F.relu(y)))
        return F.avg_pool2d(y + self.shortcut(x), 2)


class AdaIN(nn.Module):
    """Instance normalisation whose per-channel scale and shift are given (the person's, from the embedding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.channels = channels

    def forward(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """x: B×C×H×W; scale, shift: B×C."""
        return self.norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class AdaINResidual(nn.Module):
    """AdaIN-ReLU-conv twice plus a shortcut, optionally doubling the resolution first (nearest): the generator's
    bottleneck and up blocks. ``parameter_count`` scales and shifts come from the embedding's projection."""

    def __init__(self, *, in_channels: int, out_channels: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.adain_first, self.adain_second = AdaIN(in_channels), AdaIN(out_channels)
        self.first = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.second = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    @property
    def parameter_count(self) -> int:
        return 2 * (self.adain_first.channels + self.adain_second.channels)

    def forward(self, x: Tensor, adain: Tensor) -> Tensor:
        """x: B×C×H×W; adain: B×parameter_count (scale, shift of the first AdaIN, then of the second)."""
        c_in, c_out = self.adain_first.channels, self.adain_second.channels
        scale_1, shift_1, scale_2, shift_2 = adain.split([c_in, c_in, c_out, c_out], dim=1)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")  # B×C×H×W -> B×C×2H×2W
        y = self.first(F.relu(self.adain_first(x, scale_1, shift_1)))
        y = self.second(F.relu(self.adain_second(y, scale_2, shift_2)))
        return y + self.shortcut(x)


class SelfAttention(nn.Module):
    """SAGAN's self-attention: every position attends to every other (queries and keys at C/8 channels, values at
    C/2), added back through a learned gate that starts at 0 (the block begins as the identity)."""

    def __init__(self, channels: int, *, spectral: bool) -> None:
        super().__init__()
        self.query = maybe_spectral(nn.Conv2d(channels, max(1, channels // 8), 1), spectral=spectral)
        self.key = maybe_spectral(nn.Conv2d(channels, max(1, channels // 8), 1), spectral=spectral)
        self.value = maybe_spectral(nn.Conv2d(channels, max(1, channels // 2), 1), spectral=spectral)
        self.out = maybe_spectral(nn.Conv2d(max(1, channels // 2), channels, 1), spectral=spectral)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # B×C/8×H×W -> B×HW×C/8
        key = self.key(x).flatten(2)  # B×C/8×HW
        value = self.value(x).flatten(2)  # B×C/2×HW
        attention = torch.softmax(query @ key, dim=-1)  # B×HW×HW
        attended = (value @ attention.transpose(1, 2)).reshape(batch, -1, height, width)  # B×C/2×HW -> B×C/2×H×W
        return x + self.gate * self.out(attended)


class ImageLandmarkEncoder(nn.Module):
    """The trunk the embedder and the discriminator share (the paper gives them one architecture): an image and its
    landmark image -> residual down blocks (spectral norm, self-attention after block ``attention_after``) -> ReLU, sum
    over positions -> linear -> N×E, with every block's output (finest first).

        image, landmark image N×3×H×W in [0, 1] -> N×6×H×W in [-1, 1] -> ... -> N×C×h×w -> N×C -> N×E
    """

    def __init__(self, *, channels: tuple[int, ...], attention_after: int, out_features: int) -> None:
        super().__init__()
        widths = (6, *channels)
        self.attention_after = attention_after
        self.blocks = nn.ModuleList(
            ResidualDown(in_channels=c_in, out_channels=c_out, norm=False, spectral=True) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.attention = SelfAttention(channels[attention_after], spectral=True)
        self.project = spectral_norm(nn.Linear(channels[-1], out_features))

    def forward(self, image: Tensor, landmark_image: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = torch.cat([image, landmark_image], dim=1) * 2 - 1  # N×6×H×W in [-1, 1]
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == self.attention_after:
                x = self.attention(x)
            features.append(x)
        return self.project(F.relu(x).sum(dim=(2, 3))), features
