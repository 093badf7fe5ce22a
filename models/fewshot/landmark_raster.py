"""The landmark image of the few-shot talking heads (DESIGN §4.4): 68 points drawn as coloured polylines, one colour per
part (jaw, brows, nose, eyes, lips: contract/landmarks.py LANDMARK_POLYLINES), on black.

    landmarks B×68×2 (pixels of the H×W image; pixel i spans [i, i+1)) -> B×3×H×W in [0, 1]

Each pixel's intensity for a part is 1 inside ``thickness / 2`` pixels of the part's nearest segment, falling linearly
to 0 one pixel further out (anti-aliased lines); where parts overlap the brighter wins per channel. Computed as the
distance from every pixel centre to every segment at once, so it runs on whatever device the points are on and needs
no drawing library; the points carry no gradient (landmarks come from a tracker or the renderer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contract.landmarks import LANDMARK_POLYLINES, NUM_LANDMARKS

# One RGB colour per part, distinct and bright on black (the order of LANDMARK_POLYLINES).
PART_COLOURS: dict[str, tuple[float, float, float]] = {
    "jaw": (1.0, 1.0, 1.0),
    "brow_left": (1.0, 0.6, 0.0),
    "brow_right": (1.0, 0.6, 0.0),
    "nose_bridge": (0.0, 0.6, 1.0),
    "nostrils": (0.0, 0.6, 1.0),
    "eye_left": (0.0, 1.0, 0.3),
    "eye_right": (0.0, 1.0, 0.3),
    "lips_outer": (1.0, 0.0, 0.3),
    "lips_inner": (0.8, 0.0, 1.0),
}


def polyline_segments() -> tuple[Tensor, Tensor]:
    """Every segment of every part as point index pairs (N_seg×2 int64) and its part's colour (N_seg×3)."""
    pairs, colours = [], []
    for part, (points, closed) in LANDMARK_POLYLINES.items():
        ends = list(zip(points[:-1], points[1:])) + ([(points[-1], points[0])] if closed else [])
        pairs += ends
        colours += [PART_COLOURS[part]] * len(ends)
    return torch.tensor(pairs, dtype=torch.long), torch.tensor(colours, dtype=torch.float32)


class LandmarkRaster(nn.Module):
    """B×68×2 landmark pixels -> B×3×size×size landmark image (see the module docstring)."""

    def __init__(self, *, size: int, thickness: float = 1.5) -> None:
        super().__init__()
        if size < 8 or thickness <= 0:
            raise ValueError(f"a landmark image needs size ≥ 8 and a positive thickness, got {size} and {thickness}")
        self.size = size
        self.thickness = thickness
        pairs, colours = polyline_segments()
        self.register_buffer("pairs", pairs, persistent=False)  # N_seg×2
        self.register_buffer("colours", colours, persistent=False)  # N_seg×3
        centres = torch.arange(size, dtype=torch.float32) + 0.5
        grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1).reshape(-1, 2)  # H·W×2 (x, y)
        self.register_buffer("pixels", grid, persistent=False)

    @torch.no_grad()
    def forward(self, landmarks: Tensor) -> Tensor:
        if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 2):
            raise ValueError(f"landmarks must be B×{NUM_LANDMARKS}×2, got {tuple(landmarks.shape)}")
        start = landmarks[:, self.pairs[:, 0]].float()  # B×N_seg×2
        direction = landmarks[:, self.pairs[:, 1]].float() - start  # B×N_seg×2
        # Distance from each pixel centre to each segment: project onto the segment, clamp to its ends.
        offset = self.pixels[None, :, None, :] - start[:, None]  # B×P×N_seg×2 (P = H·W)
        length2 = direction.square().sum(-1).clamp_min(1e-6)  # B×N_seg
        along = ((offset * direction[:, None]).sum(-1) / length2[:, None]).clamp(0, 1)  # B×P×N_seg
        distance = (offset - along[..., None] * direction[:, None]).norm(dim=-1)  # B×P×N_seg
        strength = (1 - (distance - self.thickness / 2)).clamp(0, 1)  # 1 on the line, 0 a pixel beyond its edge
        image = (strength[..., None] * self.colours).amax(dim=2)  # B×P×N_seg×3 -> B×P×3
        return image.transpose(1, 2).reshape(len(landmarks), 3, self.size, self.size)  # B×3×P -> B×3×H×W
