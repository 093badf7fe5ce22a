"""The few-shot talking heads' objective (Zakharov et al. 2019, DESIGN §4.4), shared by meta-learning and fine-tuning.

Generator (and embedder) step, for the output (rgb, alpha) of G(target landmark image, ê) against the target:
    content     the student's content terms (student_objective.py: L1 weighted on eyes and mouth, SSIM, mask,
                perceptual EfficientNet-Lite0, face dlib ResNet) in place of the paper's VGG19 and VGGFace
    adversarial -D(output): hinge, on the projection discriminator's realism r = v · (w + w0) + b
    matching    L1 between D's block features of the output and of the target (the target's detached)
    match       mean |ê - w|: the embedder's ê pulled toward the discriminator's row w (detached here), λ embedder_match
Discriminator step: hinge on the target (real) and the detached output (fake), plus the same match term with ê
detached, pulling w toward ê (λ embedding_match). The paper's one term moves both; its two sides have their own λ here
because on a short CPU run the generator's side pinned ê near the rows' small initial values (README, "Few-shot").
Meta-learning's w is the video's row W_i; fine-tuning's is ê_new (the paper's w' =
ê_new + w0, trained from there), so the match terms are then off.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from models.fewshot.discriminator import FewShotDiscriminator
from models.training.fewshot_settings import FewShotLossWeights
from models.training.objective_weights import ObjectiveWeights
from models.training.student_objective import STUDENT_DISCRIMINATORS, LossNetworks, ObjectiveTerms, StudentObjective


class FewShotBatch(NamedTuple):
    """What the objective compares (B samples)."""

    target: Tensor  # B×3×H×W
    target_alpha: Tensor  # B×1×H×W
    target_landmarks: Tensor  # B×68×2 pixels
    landmark_image: Tensor  # B×3×H×W: the target's, the generator's input


class FewShotObjective:
    def __init__(self, *, content: ObjectiveWeights, losses: FewShotLossWeights, networks: LossNetworks, perceptual_size: int) -> None:
        if content.adversarial or content.feature_matching:
            raise ValueError("the content weights take no PatchGAN terms: the projection discriminator judges (adversarial, matching)")
        self.content = StudentObjective(
            weights=content, networks=networks, discriminator=STUDENT_DISCRIMINATORS["small"], perceptual_size=perceptual_size
        )
        self.losses = losses

    def generator_terms(
        self,
        rgb: Tensor,
        alpha: Tensor,
        batch: FewShotBatch,
        *,
        discriminator: FewShotDiscriminator,
        rows: Tensor,
        embedding: Tensor | None,
    ) -> ObjectiveTerms:
        """rows: B×E, the discriminator's w per sample; embedding: B×E ê for the match term (None: off)."""
        content = self.content.generator_terms(rgb, alpha, batch.target, batch.target_alpha, batch.target_landmarks)
        terms, total = dict(content.terms), content.total
        losses = self.losses
        if losses.adversarial or losses.feature_matching:
            discriminator.requires_grad_(False)  # the generator's step does not train it
            fake = discriminator.realism_with(rgb, batch.landmark_image, rows.detach())
            with torch.no_grad():
                real = discriminator.realism_with(batch.target, batch.landmark_image, rows.detach())
            discriminator.requires_grad_(True)
            terms["adversarial"] = -fake.realism.mean()
            terms["matching"] = torch.stack([F.l1_loss(f, r) for f, r in zip(fake.features, real.features)]).mean()
            total = total + losses.adversarial * terms["adversarial"] + losses.feature_matching * terms["matching"]
        if embedding is not None:
            terms["match"] = (embedding - rows.detach()).abs().mean()
            total = total + losses.embedder_match * terms["match"]
        return ObjectiveTerms(total=total, terms=terms)

    def discriminator_loss(self, real: Tensor, fake: Tensor, *, rows: Tensor, embedding: Tensor | None) -> dict[str, Tensor]:
        """The discriminator's hinge on its realism for the targets (real, B) and the detached outputs (fake, B), and
        the match term pulling its rows (B×E) toward the (detached) embedding; "total" is what to minimise. The caller
        runs the discriminator (a DistributedDataParallel wrapper must see the forward)."""
        hinge = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        out = {"d_hinge": hinge, "d_real": real.mean().detach(), "d_fake": fake.mean().detach()}
        total = hinge
        if embedding is not None and self.losses.embedding_match:
            out["d_match"] = (rows - embedding.detach()).abs().mean()
            total = total + self.losses.embedding_match * out["d_match"]
        out["total"] = total
        return out

    def describe(self, networks: LossNetworks) -> dict[str, object]:
        return {**self.content.describe(networks), "fewshot": asdict(self.losses), "discriminator": "projection (models/fewshot)"}
