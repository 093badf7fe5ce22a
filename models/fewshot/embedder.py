"""The few-shot talking heads' embedder E (Zakharov et al. 2019, DESIGN §4.4): K frames of a person with their landmark
images -> the person's embedding ê, the mean of the per-frame ones.

    frames B×K×3×H×W, landmark images B×K×3×H×W (both in [0, 1]) -> per frame: the shared image-and-landmarks trunk
    (residual_blocks.ImageLandmarkEncoder) -> B·K×E -> mean over K -> B×E
"""

from __future__ import annotations

from torch import Tensor, nn

from models.fewshot.config import FewShotConfig
from models.fewshot.residual_blocks import ImageLandmarkEncoder


class FewShotEmbedder(nn.Module):
    def __init__(self, *, config: FewShotConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = ImageLandmarkEncoder(
            channels=config.channels, attention_after=config.attention_after, out_features=config.embedding_dim
        )

    def per_frame(self, frames: Tensor, landmark_images: Tensor) -> Tensor:
        """N×3×H×W frames and their landmark images -> N×E (one embedding per frame)."""
        embedding, _ = self.trunk(frames, landmark_images)
        return embedding

    def forward(self, frames: Tensor, landmark_images: Tensor) -> Tensor:
        batch, shots = frames.shape[:2]
        per_frame = self.per_frame(frames.flatten(0, 1), landmark_images.flatten(0, 1))  # B·K×E
        return per_frame.unflatten(0, (batch, shots)).mean(dim=1)  # B·K×E -> B×K×E -> B×E
