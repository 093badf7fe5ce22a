"""Train the benchmark's parameter regressor (models/nets/parameter_regressor.py) on SyntheticHeads renders.

The renders are made once (half independent random motions, half clip frames) and stored at the
regressor's size; each step draws a batch and blurs each image by a random amount, so the regressor
stays usable on soft model outputs. The checkpoint (kind "regressor") holds its held-out errors.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from models.blocks import resize_square
from models.checkpoints import REGRESSOR_KIND, save_checkpoint
from models.data.heads import HeadMotion, Identity, SyntheticHeads, sample_clip, sample_identities, sample_motions
from models.data.synthetic_pairs import derived_seed
from models.nets.parameter_regressor import (
    ParameterErrors,
    ParameterRegressor,
    RegressorConfig,
    held_out_errors,
    identity_prior,
    on_white,
)
from models.training.augment import gaussian_blur
from models.training.common import TrainingError, adam_with_cosine


@dataclass(frozen=True)
class RegressorTrainConfig:
    out: str  # checkpoint path
    renders: int = 8000  # training images, rendered once at render_resolution
    render_resolution: int = 128
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_blur: float = 0.75  # Gaussian blur sigma, in regressor pixels, drawn per image from [0, max_blur]
    seed: int = 7  # its identities and motions: neither the teacher's training pool nor the benchmark's held-out seed
    held_out: int = 256  # fresh renders its own error is measured on, after training
    command: str = ""


class RegressorTrainingSet(NamedTuple):
    images: Tensor  # N×3×r×r foreground on white
    motion: HeadMotion  # N
    identity: Identity  # N


def render_training_set(config: RegressorTrainConfig, regressor: RegressorConfig, *, progress: bool) -> RegressorTrainingSet:
    """Random identities, half in independent random motions and half in clip frames, rendered once and
    stored at the regressor's size."""
    generator = torch.Generator().manual_seed(derived_seed(config.seed, "renders"))
    count = config.renders
    identities = sample_identities(count, generator=generator)
    clip_frames = count - count // 2
    clips = [sample_clip(64, generator=generator) for _ in range(math.ceil(clip_frames / 64))]
    motion = HeadMotion.cat([sample_motions(count // 2, generator=generator), HeadMotion.cat(clips)[:clip_frames]])
    heads = SyntheticHeads(resolution=config.render_resolution)
    images = torch.empty(count, 3, regressor.resolution, regressor.resolution)
    batch = 64
    with torch.inference_mode(), tqdm(total=count, desc="rendering", unit="image", disable=not progress) as bar:
        for start in range(0, count, batch):
            part = slice(start, min(start + batch, count))
            render = heads.render(identities[part], motion[part])
            images[part] = resize_square(on_white(render.rgb, render.alpha), regressor.resolution)
            bar.update(part.stop - part.start)
    return RegressorTrainingSet(images=images, motion=motion, identity=identities)


@dataclass(frozen=True)
class RegressorSummary:
    path: Path
    steps: int
    final_loss: float
    seconds: float
    held_out: ParameterErrors  # on renders of identities and motions it never saw (no blur)


def train_regressor(
    config: RegressorTrainConfig, *, regressor_config: RegressorConfig | None = None, progress: bool = True
) -> RegressorSummary:
    regressor_config = regressor_config or RegressorConfig()
    if config.renders < config.batch_size or config.steps < 1 or config.batch_size < 1:
        raise TrainingError("the regressor needs --steps ≥ 1, --batch ≥ 1 and --renders ≥ --batch")
    began = time.perf_counter()
    torch.manual_seed(derived_seed(config.seed, "weights"))
    mean, std = identity_prior(config.seed)
    model = ParameterRegressor(config=regressor_config, identity_mean=mean, identity_std=std)
    data = render_training_set(config, regressor_config, progress=progress)
    identity_targets = model.standardise(data.identity)
    optimiser, scheduler = adam_with_cosine(
        model.parameters(), learning_rate=config.learning_rate, final_learning_rate=config.learning_rate / 100, steps=config.steps
    )
    generator = torch.Generator().manual_seed(derived_seed(config.seed, "batches"))
    loss = torch.tensor(math.nan)
    model.train()
    for _ in tqdm(range(config.steps), desc="regressor", unit="step", disable=not progress):
        index = torch.randint(config.renders, (config.batch_size,), generator=generator)
        sigma = torch.rand(config.batch_size, generator=generator) * config.max_blur
        images = gaussian_blur(data.images[index], sigma)
        predicted = model(images)
        motion = data.motion[index]
        true_pose = torch.stack([motion.yaw, motion.pitch, motion.roll], dim=1)
        loss = (
            F.smooth_l1_loss(predicted.pose * 4, true_pose * 4)
            + F.smooth_l1_loss(predicted.expression * 4, motion.expression * 4)
            + F.smooth_l1_loss(predicted.identity, identity_targets[index])
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
    model.eval()
    held_out = held_out_errors(
        model, seed=derived_seed(config.seed, "held-out"), resolution=config.render_resolution, count=config.held_out
    )
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_config": asdict(regressor_config),
            "train_config": asdict(config),
            "held_out": asdict(held_out),
        },
        out,
        kind=REGRESSOR_KIND,
    )
    return RegressorSummary(
        path=out, steps=config.steps, final_loss=float(loss.detach()), seconds=time.perf_counter() - began, held_out=held_out
    )
