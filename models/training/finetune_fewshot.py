"""Fine-tune the meta-learned few-shot talking heads on K frames of a new person (Zakharov et al. 2019 §3.3).

    ê_new = mean over the K frames of E(frame, landmark image)
    ψ' = P·ê_new (a new parameter: the generator's AdaIN scales and shifts for this person); the generator's weights
    w' = ê_new (the discriminator's row for this person; r = v · (w' + w0) + b)
Then ``steps`` steps of self-reenactment on the K frames (each step a batch drawn from them: the frame's own landmark
image in, the frame as the target), training the generator with ψ' (and, when the adversarial or feature-matching
weight is on, the discriminator with w') on the objective of fewshot_objective.py (the embedding-match term is off:
there is no W_i to match). The default is content only (fewshot_settings.py: the CPU-trained discriminator's terms made
fine-tuning worse than none). ``steps`` 0 is the feed-forward
model: ψ = P·ê_new, nothing trained.

Frames without alpha (photographs, video) train without the mask term; the output's alpha is then the meta-learned
one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import Tensor

from models.checkpoints import FewShotNetworks
from models.fewshot.generator import FewShotGenerator
from models.fewshot.landmark_raster import LandmarkRaster
from models.training.common import TrainingError
from models.training.fewshot_objective import FewShotBatch, FewShotObjective
from models.training.fewshot_settings import FewShotFinetuneConfig
from models.training.student_objective import LossNetworks

ADAM_BETAS = (0.5, 0.999)


class FinetunedPerson(NamedTuple):
    generator: FewShotGenerator  # fine-tuned (a copy: the meta-learned networks are untouched)
    adain: Tensor  # P: ψ'
    embedding: Tensor  # E: ê_new
    first_loss: float
    last_loss: float
    seconds: float


def finetune_person(
    networks: FewShotNetworks,
    *,
    frames: Tensor,
    landmarks: Tensor,
    config: FewShotFinetuneConfig,
    loss_networks: LossNetworks,
    alphas: Tensor | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetunedPerson:
    """frames: K×3×H×W in [0, 1]; landmarks: K×68×2 pixels; alphas: K×1×H×W or None."""
    began = time.perf_counter()
    size = networks.config.resolution
    if frames.ndim != 4 or frames.shape[1:] != (3, size, size) or landmarks.shape != (len(frames), 68, 2):
        raise TrainingError(f"frames must be K×3×{size}×{size} with K×68×2 landmarks, got {tuple(frames.shape)}, {tuple(landmarks.shape)}")
    torch.manual_seed(config.seed)
    landmark_images = LandmarkRaster(size=size)(landmarks)  # K×3×H×W
    embedder = networks.embedder.eval()
    generator = copy.deepcopy(networks.generator).train()
    discriminator = copy.deepcopy(networks.discriminator).train()
    with torch.no_grad():
        embedding = embedder(frames[None], landmark_images[None])[0]  # 1×K×3×H×W -> E
    adain = torch.nn.Parameter(generator.adain_parameters(embedding[None]).detach()[0])  # ψ' = P·ê_new
    row = torch.nn.Parameter(embedding.detach().clone())  # w' = ê_new
    content = config.content if alphas is not None else replace(config.content, mask=0.0)
    no_match = replace(config.losses, embedding_match=0.0, embedder_match=0.0)  # no W_i to match when fine-tuning
    objective = FewShotObjective(content=content, losses=no_match, networks=loss_networks, perceptual_size=config.perceptual_size)
    optimiser = torch.optim.Adam([*generator.parameters(), adain], lr=config.learning_rate, betas=ADAM_BETAS)
    d_optimiser = torch.optim.Adam([*discriminator.parameters(), row], lr=config.learning_rate, betas=ADAM_BETAS)
    generator_draws = torch.Generator().manual_seed(config.seed)
    adversarial = bool(config.losses.adversarial or config.losses.feature_matching)
    first = last = float("nan")
    for step in range(config.steps):
        chosen = torch.randint(len(frames), (min(config.batch, len(frames)),), generator=generator_draws)
        target_alpha = alphas[chosen] if alphas is not None else torch.zeros_like(frames[chosen, :1])
        batch = FewShotBatch(
            target=frames[chosen], target_alpha=target_alpha, target_landmarks=landmarks[chosen], landmark_image=landmark_images[chosen]
        )
        count = len(chosen)
        output = generator.generate(batch.landmark_image, adain[None].expand(count, -1))
        if alphas is None:
            batch = batch._replace(target_alpha=output.alpha.detach())  # no mask target: the term is off, keep it 0
        rows = row[None].expand(count, -1)
        terms = objective.generator_terms(output.rgb, output.alpha, batch, discriminator=discriminator, rows=rows, embedding=None)
        optimiser.zero_grad(set_to_none=True)
        terms.total.backward()
        optimiser.step()
        if adversarial:  # the discriminator trains only when its terms are on
            judged = discriminator.realism_with(
                torch.cat([batch.target, output.rgb.detach()]), batch.landmark_image.repeat(2, 1, 1, 1), rows.repeat(2, 1)
            )
            real, fake = judged.realism.chunk(2)  # 2B -> B, B
            d_terms = objective.discriminator_loss(real, fake, rows=rows, embedding=None)
            d_optimiser.zero_grad(set_to_none=True)
            d_terms["total"].backward()
            d_optimiser.step()
        last = float(terms.total.detach())
        first = last if step == 0 else first
        if on_step is not None:
            on_step(step + 1, last)
    return FinetunedPerson(
        generator=generator.eval(),
        adain=adain.detach().clone(),
        embedding=embedding,
        first_loss=first,
        last_loss=last,
        seconds=time.perf_counter() - began,
    )
