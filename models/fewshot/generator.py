"""The few-shot talking heads' generator G (Zakharov et al. 2019, DESIGN §4.4): a landmark image and the person's
embedding -> the person in that pose and expression.

    landmark image B×3×H×W in [0, 1] -> residual down blocks with instance norm (self-attention after block
    ``attention_after``) -> B×C×h×w -> ``bottleneck_blocks`` AdaIN residual blocks -> AdaIN residual up blocks (the
    same self-attention position on the way up) -> AdaIN, ReLU, conv 3×3 -> rgb B×3×H×W and alpha B×1×H×W (sigmoid)
    Every AdaIN's scale and shift come from ψ = P·ê: one linear projection of the embedding for all of them (the
    paper's P), so fine-tuning can start from ψ' = P·ê_new and move ψ' alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from models.fewshot.config import FewShotConfig
from models.fewshot.residual_blocks import AdaIN, AdaINResidual, ResidualDown, SelfAttention


class GeneratorOutput(NamedTuple):
    rgb: Tensor  # B×3×H×W in [0, 1]
    alpha: Tensor  # B×1×H×W in [0, 1]


class FewShotGenerator(nn.Module):
    def __init__(self, *, config: FewShotConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.channels
        widths = (3, *channels)
        self.down = nn.ModuleList(
            ResidualDown(in_channels=c_in, out_channels=c_out, norm=True, spectral=False) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.attention_down = SelfAttention(channels[config.attention_after], spectral=False)
        self.bottleneck = nn.ModuleList(
            AdaINResidual(in_channels=channels[-1], out_channels=channels[-1], upsample=False) for _ in range(config.bottleneck_blocks)
        )
        # Up block k doubles the resolution and maps channels[-1-k] -> channels[-2-k] (channels[0] at the last).
        ups = (*channels[::-1], channels[0])
        self.up = nn.ModuleList(
            AdaINResidual(in_channels=c_in, out_channels=c_out, upsample=True) for c_in, c_out in zip(ups[:-1], ups[1:])
        )
        self.attention_up = SelfAttention(channels[config.attention_after], spectral=False)
        self.out_adain = AdaIN(channels[0])
        self.out = nn.Conv2d(channels[0], 4, 3, padding=1)
        self.adain_sizes = [block.parameter_count for block in (*self.bottleneck, *self.up)] + [2 * channels[0]]
        self.projection = nn.Linear(config.embedding_dim, sum(self.adain_sizes))  # the paper's P: ê -> ψ

    def adain_parameters(self, embedding: Tensor) -> Tensor:
        """ψ = P·ê: B×E -> B×(every AdaIN's scales and shifts)."""
        return self.projection(embedding)

    def forward(self, landmark_image: Tensor, embedding: Tensor) -> GeneratorOutput:
        return self.generate(landmark_image, self.adain_parameters(embedding))

    def generate(self, landmark_image: Tensor, adain: Tensor) -> GeneratorOutput:
        """From ψ directly (fine-tuning moves ψ itself): landmark image B×3×H×W, ψ B×P."""
        config = self.config
        parts = list(adain.split(self.adain_sizes, dim=1))
        x = landmark_image * 2 - 1
        for index, block in enumerate(self.down):
            x = block(x)  # B×C×r×r -> B×C'×r/2×r/2
            if index == config.attention_after:
                x = self.attention_down(x)
        for block in self.bottleneck:
            x = block(x, parts.pop(0))
        last = len(self.down) - 1
        for index, block in enumerate(self.up):
            if last - index == config.attention_after:  # up block index restores down block (last - index)'s input size
                x = self.attention_up(x)
            x = block(x, parts.pop(0))  # B×C×r×r -> B×C'×2r×2r
        scale, shift = parts.pop(0).chunk(2, dim=1)
        logits = self.out(F.relu(self.out_adain(x, scale, shift)))  # B×4×H×W
        rgb, alpha = logits.split([3, 1], dim=1)
        return GeneratorOutput(rgb=rgb.sigmoid(), alpha=alpha.sigmoid())
