"""The few-shot talking heads' projection discriminator D (Zakharov et al. 2019, DESIGN §4.4): is this image of video i
real for this landmark image?

    image, landmark image (B×3×H×W each, [0, 1]) -> the trunk it shares with the embedder
    (residual_blocks.ImageLandmarkEncoder; its own weights) -> v B×E
    realism r = v · (W_i + w0) + b: W is one learned row per training video, w0 and b shared
The features of every block come back too (the generator's feature-matching loss). Fine-tuning on a new person
replaces W_i by ê_new (so r = v · (ê_new + w0) + b: ``realism_with``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.fewshot.config import FewShotConfig
from models.fewshot.residual_blocks import ImageLandmarkEncoder


class DiscriminatorOutput(NamedTuple):
    realism: Tensor  # B
    features: list[Tensor]  # every down block's output, finest first (feature matching)
    vector: Tensor  # B×E: v, before the projection onto W_i + w0


class FewShotDiscriminator(nn.Module):
    def __init__(self, *, config: FewShotConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = ImageLandmarkEncoder(
            channels=config.channels, attention_after=config.attention_after, out_features=config.embedding_dim
        )
        self.video_rows = nn.Embedding(config.num_videos, config.embedding_dim)  # W: one row per training video
        self.shared_row = nn.Parameter(torch.zeros(config.embedding_dim))  # w0
        self.bias = nn.Parameter(torch.zeros(()))  # b
        nn.init.normal_(self.video_rows.weight, std=0.02)

    def forward(self, image: Tensor, landmark_image: Tensor, video: Tensor) -> DiscriminatorOutput:
        """video: B int64, each sample's training video (its row of W)."""
        return self.realism_with(image, landmark_image, self.video_rows(video))

    def realism_with(self, image: Tensor, landmark_image: Tensor, rows: Tensor) -> DiscriminatorOutput:
        """r = v · (rows + w0) + b with given rows B×E (fine-tuning: the new person's ê)."""
        vector, features = self.trunk(image, landmark_image)
        realism = (vector * (rows + self.shared_row)).sum(dim=1) + self.bias  # B×E · B×E -> B
        return DiscriminatorOutput(realism=realism, features=features, vector=vector)
