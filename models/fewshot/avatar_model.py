"""The few-shot talking heads in the reenactment benchmark (`megalive-train eval --model RUN/checkpoint.pt` of a
`megalive-train fewshot-meta` run): the evaluation's AvatarModel (models/evaluation.py) for them.

Avatars are made from K frames of each source (``enroll_sources``: the benchmark's ``--enroll-shots K``): the embedder's
ê gives ψ = P·ê (feed-forward), and ``refine_steps`` > 0 fine-tunes a copy of the generator per avatar on its K frames
(models/training/finetune_fewshot.py), as `megalive-train fewshot-finetune` does for a user's frames. Driven by
landmarks (B×68×2 in [0, 1]: drawn as landmark images) or ARKit curves (the puppet's landmarks, retargeted onto each
avatar's neutral landmarks, as the exported ARKit graph does).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from models.checkpoints import load_fewshot
from models.fewshot.generator import FewShotGenerator, GeneratorOutput
from models.fewshot.landmark_raster import LandmarkRaster
from models.fewshot.personal import PuppetLandmarks
from models.training.fewshot_settings import FewShotFinetuneConfig
from models.training.finetune_fewshot import finetune_person
from models.training.student_objective import LossNetworks, load_loss_networks


class FewShotAvatarModel:
    kind = "fewshot"
    draws_background = True

    def __init__(self, path: Path, *, driver: str = "landmarks", finetune: FewShotFinetuneConfig | None = None) -> None:
        if driver not in ("landmarks", "arkit"):
            raise ValueError(f"the few-shot talking heads are driven by landmarks or arkit, not {driver!r}")
        self.networks = load_fewshot(path)
        self.driver = driver
        self.resolution = self.networks.config.resolution
        self.raster = LandmarkRaster(size=self.resolution)
        self.finetune = finetune or FewShotFinetuneConfig(checkpoint=str(path), frames="", out="")
        self.generators: list[FewShotGenerator] = []
        self.adain: list[Tensor] = []  # per avatar: ψ' (P)
        self.neutral: Tensor | None = None  # A×68×2 in [0, 1]: each avatar's first frame's landmarks (its portrait)
        self.puppet = PuppetLandmarks(neutral_landmarks=torch.zeros(1, 68, 2), resolution=self.resolution)

    def set_sources(self, sources: Tensor) -> None:
        raise ValueError("few-shot avatars are made from frames of each source: give --enroll-shots K")

    def enroll_sources(self, frames: Tensor, landmarks: Tensor, *, refine_steps: int) -> list[float]:
        """frames A×K×3×H×W, landmarks A×K×68×2 pixels -> one personal generator and ψ' per avatar; the seconds each took."""
        config = replace(self.finetune, steps=refine_steps, shots=frames.shape[1])
        seconds = []
        with torch.inference_mode(False), torch.enable_grad():  # the benchmark runs in inference mode; fine-tuning needs autograd
            # Feed-forward (0 steps) computes no loss: no network to load.
            loss_networks = (
                load_loss_networks(config.content, allow_missing=config.allow_missing_nets)
                if refine_steps
                else LossNetworks(perceptual=None, face=None, status={})
            )
            for own_frames, own_landmarks in zip(frames, landmarks):
                began = time.perf_counter()
                person = finetune_person(
                    self.networks,
                    frames=own_frames.clone(),
                    landmarks=own_landmarks.clone(),
                    config=config,
                    loss_networks=loss_networks,
                )
                self.generators.append(person.generator)
                self.adain.append(person.adain)
                seconds.append(time.perf_counter() - began)
        self.neutral = landmarks[:, 0] / self.resolution
        self.puppet.neutral_landmarks = self.neutral.float()
        return seconds

    def __call__(self, signal: Tensor, avatar: Tensor) -> GeneratorOutput:
        if not self.generators:
            raise ValueError("no avatars yet: enroll_sources first")
        points = self.puppet(signal.float(), avatar) if self.driver == "arkit" else signal.float()  # B×68×2 in [0, 1]
        images = self.raster(points * self.resolution)  # B×3×H×W
        rgb = torch.empty(len(avatar), 3, self.resolution, self.resolution)
        alpha = torch.empty(len(avatar), 1, self.resolution, self.resolution)
        for who in avatar.unique().tolist():  # each avatar its own fine-tuned generator
            rows = (avatar == who).nonzero().flatten()
            output = self.generators[who].generate(images[rows], self.adain[who][None].expand(len(rows), -1))
            rgb[rows], alpha[rows] = output.rgb, output.alpha
        return GeneratorOutput(rgb=rgb, alpha=alpha)  # the fields of the benchmark's AvatarOutput
