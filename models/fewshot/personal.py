"""A personal few-shot model as it is exported and served (DESIGN §4.4): the fine-tuned generator with each person's
AdaIN parameters ψ' fixed, and the ARKit path through the puppet's landmarks.

    PersonalGenerator   landmark image B×3×H×W (contract/landmark_image.py), avatar B int64 -> rgb B×3×H×W, alpha B×1×H×W
                        (ψ' looked up per avatar: a table N×P, one row per person in the model)
    PuppetLandmarks     ARKit curves B×61, avatar B -> landmarks B×68×2 in [0, 1] over the crop: the puppet's face
                        (models/megaportraits/puppet.py) posed by the curves, retargeted onto each person's neutral
                        landmarks (contract/landmark_image.py retarget_landmarks), so the person keeps their face shape
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contract.landmark_image import retarget_landmarks
from models.data.heads import SyntheticHeads, neutral_motion
from models.fewshot.generator import FewShotGenerator
from models.megaportraits.puppet import motion_from_curves, puppet_identity


class PersonalGenerator(nn.Module):
    def __init__(self, *, generator: FewShotGenerator, adain: Tensor) -> None:
        """adain: N×P, each person's ψ' (the generator's AdaIN parameters after fine-tuning)."""
        super().__init__()
        if adain.ndim != 2 or adain.shape[1] != sum(generator.adain_sizes):
            raise ValueError(f"ψ must be N×{sum(generator.adain_sizes)}, got {tuple(adain.shape)}")
        self.generator = generator
        self.register_buffer("adain", adain.detach().clone())

    def forward(self, driver: Tensor, avatar: Tensor) -> tuple[Tensor, Tensor]:
        output = self.generator.generate(driver, self.adain[avatar])  # ψ' N×P -> B×P
        return output.rgb, output.alpha


class PuppetLandmarks(nn.Module):
    def __init__(self, *, neutral_landmarks: Tensor, resolution: int = 256) -> None:
        """neutral_landmarks: N×68×2 in [0, 1], each person's neutral face (the mean of their fine-tuning frames)."""
        super().__init__()
        self.heads = SyntheticHeads(resolution=resolution)  # landmarks only: the resolution sets their units
        self.identity = puppet_identity()
        self.register_buffer("neutral_landmarks", neutral_landmarks.detach().clone().float())
        puppet_neutral = self.heads.landmarks(self.identity, neutral_motion(1)) / resolution  # 1×68×2 in [0, 1]
        self.register_buffer("puppet_neutral", puppet_neutral)

    def forward(self, curves: Tensor, avatar: Tensor) -> Tensor:
        motion = motion_from_curves(curves)
        puppet = self.heads.landmarks(self.identity, motion) / self.heads.resolution  # B×68×2 in [0, 1]
        return retarget_landmarks(puppet, self.puppet_neutral, self.neutral_landmarks[avatar])


def mean_landmarks(landmarks: Tensor) -> Tensor:
    """K×68×2 -> 68×2: a person's neutral landmarks, the mean over their frames (aligned crops frame every face alike)."""
    return torch.as_tensor(landmarks).float().mean(dim=0)
