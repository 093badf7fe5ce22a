"""The few-shot talking heads' sizes (DESIGN §4.4): one typed config shared by embedder, generator and discriminator,
and its presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class FewShotConfig:
    resolution: int  # images and landmark images are resolution × resolution
    embedding_dim: int  # the person's embedding ê (the paper: 512)
    channels: tuple[int, ...]  # per down block, finest first: block k outputs resolution / 2^(k+1)
    attention_after: int  # self-attention after this down block (and before the matching up block)
    bottleneck_blocks: int  # AdaIN residual blocks at the coarsest resolution
    num_videos: int = 1  # the discriminator's rows W_i: one per training video (identity)

    def __post_init__(self) -> None:
        if not self.channels or self.resolution % 2 ** len(self.channels):
            raise ValueError(f"resolution {self.resolution} must be divisible by 2^{len(self.channels)} (one halving per block)")
        if not 0 <= self.attention_after < len(self.channels):
            raise ValueError(f"attention_after must index a down block (0..{len(self.channels) - 1}), got {self.attention_after}")
        if self.embedding_dim < 1 or self.bottleneck_blocks < 1 or self.num_videos < 1:
            raise ValueError("embedding_dim, bottleneck_blocks and num_videos must be at least 1")

    @property
    def bottleneck_resolution(self) -> int:
        return self.resolution // 2 ** len(self.channels)


FEWSHOT_PRESETS: dict[str, FewShotConfig] = {
    # 64 px, for tests: builds and steps in well under a second.
    "tiny": FewShotConfig(resolution=64, embedding_dim=32, channels=(8, 16, 32), attention_after=1, bottleneck_blocks=1),
    # 128 px, trainable on two CPU cores and served at ≥ 25 frames/s there: 5 narrow down blocks to 4×4 (measured: a
    # quarter of the step time and 0.9× the per-frame time of 4 blocks of twice the width), attention at 16×16.
    "cpu128": FewShotConfig(resolution=128, embedding_dim=256, channels=(16, 32, 64, 128, 256), attention_after=2, bottleneck_blocks=2),
    # The paper's 256 px generator: 5 down blocks to 8×8 (64 ... 512), attention at 32×32, 5 AdaIN blocks at the bottleneck.
    "paper256": FewShotConfig(resolution=256, embedding_dim=512, channels=(64, 128, 256, 512, 512), attention_after=2, bottleneck_blocks=5),
}


def fewshot_config(preset: str, *, num_videos: int = 1) -> FewShotConfig:
    if preset not in FEWSHOT_PRESETS:
        raise ValueError(f"unknown few-shot preset {preset!r} (known: {', '.join(FEWSHOT_PRESETS)})")
    return dataclasses.replace(FEWSHOT_PRESETS[preset], num_videos=num_videos)
