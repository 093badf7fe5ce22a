"""The landmark image of the few-shot talking heads (DESIGN §4.4) as a torch module over batches: 68 points drawn as
coloured polylines per part, by the one drawing the server uses too (contract/landmark_image.py).

    landmarks B×68×2 (pixels of the H×W image; pixel i spans [i, i+1)) -> B×3×H×W in [0, 1], on the points' device

The points carry no gradient (landmarks come from a tracker or the renderer); the drawing runs on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from contract.landmark_image import LINE_THICKNESS, draw_landmark_image
from contract.landmarks import NUM_LANDMARKS


class LandmarkRaster(nn.Module):
    """B×68×2 landmark pixels -> B×3×size×size landmark image."""

    def __init__(self, *, size: int, thickness: float = LINE_THICKNESS) -> None:
        super().__init__()
        if size < 8 or thickness <= 0:
            raise ValueError(f"a landmark image needs size ≥ 8 and a positive thickness, got {size} and {thickness}")
        self.size = size
        self.thickness = thickness

    @torch.no_grad()
    def forward(self, landmarks: Tensor) -> Tensor:
        if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 2):
            raise ValueError(f"landmarks must be B×{NUM_LANDMARKS}×2, got {tuple(landmarks.shape)}")
        points = landmarks.detach().cpu().double().numpy()
        images = np.stack([draw_landmark_image(p, size=self.size, thickness=self.thickness) for p in points])  # B×H×W×3
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(landmarks.device)  # B×H×W×3 -> B×3×H×W
