"""ContractModel: a small random-weight network that satisfies the avatar-model contract.

It exists to test and benchmark the runtime (transport, batching, latency) without a trained model:
its output is meaningless as a picture. Its cost is set to be in the range of a real-time student at
256×256 on CPU, so that the server's overhead is measured against realistic inference times.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.config_checks import check_ranges


@dataclass(frozen=True)
class ContractModelConfig:
    resolution: int = 256
    num_avatars: int = 4
    width: int = 32  # channels after the first downsampling

    def __post_init__(self) -> None:
        check_ranges(self, (
            ("resolution", not (16 <= self.resolution <= 1024 and self.resolution % 4 == 0), "must be a multiple of 4 in [16, 1024]"),
            ("num_avatars", not 1 <= self.num_avatars <= 1024, "must be in [1, 1024]"),
            ("width", not 1 <= self.width <= 512, "must be in [1, 512]"),
        ))  # fmt: skip


class ContractModel(nn.Module):
    def __init__(self, *, config: ContractModelConfig = ContractModelConfig(), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        width = config.width
        self.config = config
        self.encode = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.avatar_codes = nn.Embedding(config.num_avatars, 2 * width)
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 4, 3, padding=1),
        )

    def forward(self, driver: torch.Tensor, avatar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encode(driver)  # B×2w×H/4×W/4
        features = features + self.avatar_codes(avatar)[:, :, None, None]  # B×2w -> B×2w×1×1
        out = torch.sigmoid(self.decode(features))  # B×4×H×W
        return out[:, :3], out[:, 3:]
