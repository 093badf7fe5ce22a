"""Meta-learn enrollment: the identity embedder (models/megaportraits/identity_embedder.py) with the student, so a
portrait the model never saw becomes an avatar in one forward pass (DESIGN §4.3).

It starts from a trained student (`megalive-train student`): its encoder, decoder and its avatars' identity tensors.
Each step's batch has two halves, both reenacted in cross-driving mode and scored by the student's own objective
(student_objective.py):
    native  pairs of the student's dataset (its avatars, by their identity tensors): the shipped avatars keep training,
            so they keep their quality while the decoder learns to read embedded identities
    new     new SyntheticHeads identities (models/data/enrollment_samples.py): 1 to ``shots`` frames of each (the
            number drawn per step; a portrait first) -> the embedder -> identity tensors -> the student, driven by
            another identity, against the renderer's picture of the new identity in the driver's motion
The discriminator is off by default (its cost on two cores buys little here); the run's config records the objective.

A run folder as every trainer's (run_folder.py). The checkpoint is a student checkpoint (kind megaportraits-student)
that also holds ``embedder`` and ``embedder_config``: `megalive-train export` writes the contract-v2 graphs from it.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from models.checkpoints import STUDENT_KIND, embedder_from_checkpoint, load_checkpoint, save_checkpoint, student_from_checkpoint
from models.data.enrollment_samples import EnrollmentSamples, EnrollmentSamplesConfig
from models.data.heads import contact_sheet
from models.data.paired import PairedHeads
from models.megaportraits.identity_embedder import IdentityEmbedder, embedder_config
from models.training.augment import DriverAugmentation
from models.training.common import TrainingError, TrainSummary, adam_with_cosine, endless_batches
from models.training.embedder_config import EmbedderTrainConfig
from models.training.run_folder import RunFolder, optimiser_state, restore_optimiser_state
from models.training.student_objective import STUDENT_DISCRIMINATORS, StudentObjective, load_loss_networks, region_weighted_l1


def check_embedder_config(config: EmbedderTrainConfig) -> None:
    if config.steps < 1 or config.native_batch < 0 or config.new_batch < 1:
        raise TrainingError("--steps and --new-batch must be at least 1, --native-batch at least 0")
    if not 1 <= config.shots <= 32:
        raise TrainingError(f"--shots must be in [1, 32], got {config.shots}")
    if not Path(config.student).is_file():
        raise TrainingError(f"--student {config.student}: no such file (a `megalive-train student` RUN/checkpoint.pt)")
    if config.objective.adversarial or config.objective.feature_matching:
        raise TrainingError("the embedder trains without the discriminator: adversarial and feature-matching weights must be 0")


def train_embedder(config: EmbedderTrainConfig, *, progress: bool = True) -> TrainSummary:
    check_embedder_config(config)
    run = RunFolder(config.run_dir)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    checkpoint = run.saved_checkpoint()
    start = checkpoint if checkpoint is not None else load_checkpoint(Path(config.student))
    student = student_from_checkpoint(start, expect_preset=config.preset if checkpoint is None else None)
    embedder = (
        embedder_from_checkpoint(start)
        if checkpoint is not None
        else IdentityEmbedder(config=embedder_config(config.preset, student.config))
    )
    dataset = PairedHeads(root=Path(config.data))
    if dataset.meta.num_avatars != student.num_avatars or dataset.meta.resolution != student.config.resolution:
        raise TrainingError(
            f"{config.data} is not the student's dataset ({dataset.meta.num_avatars} avatars at {dataset.meta.resolution} px)"
        )
    networks = load_loss_networks(config.objective, allow_missing=config.allow_missing_nets)
    objective = StudentObjective(
        weights=config.objective, networks=networks, discriminator=STUDENT_DISCRIMINATORS["small"], perceptual_size=config.perceptual_size
    )
    groups = [
        {"params": list(student.parameters()), "lr": config.learning_rate},
        {"params": list(embedder.parameters()), "lr": config.embedder_learning_rate},
    ]
    optimiser, scheduler = adam_with_cosine(
        groups, learning_rate=config.learning_rate, final_learning_rate=config.final_learning_rate, steps=config.steps
    )
    step = restore_optimiser_state(checkpoint, optimiser, scheduler) if checkpoint is not None else 0
    commands = [*(start.get("commands") or []), config.command] if checkpoint is None else list(checkpoint["commands"])
    samples = EnrollmentSamples(config=EnrollmentSamplesConfig(resolution=student.config.resolution, shots=config.shots, seed=config.seed))
    run.write_config(
        {
            "train": asdict(config),
            "model": asdict(student.config),
            "embedder": asdict(embedder.config),
            "objective": objective.describe(networks),
            "native": {"root": config.data, "command": dataset.meta.command, "avatar_names": list(dataset.meta.avatar_names)},
            "new": samples.describe(),
        }
    )
    for network, status in networks.status.items():
        if status != "active":
            tqdm.write(f"loss network {network}: {status}")
    native = endless_batches(dataset, batch_size=max(config.native_batch, 1), workers=0, seed=config.seed, step=step)
    new = endless_batches(samples, batch_size=config.new_batch, workers=config.workers, seed=config.seed + 1, step=step)
    augment = DriverAugmentation(colour=config.colour_jitter, warp=config.warp, warp_kind="affine")
    generator = torch.Generator().manual_seed(config.seed * 104729 + step)
    student.train(), embedder.train()
    with run.progress(total=config.steps, step=step, description="embedder", show=progress) as steps:
        while steps.running:
            frames, new_driver, new_rgb, new_alpha, new_landmarks = next(new)
            shots = int(torch.randint(1, config.shots + 1, (1,), generator=generator))
            identity = embedder(frames[:, :shots])  # B×k×3×H×W -> B×C_id×S×S
            driver, target_rgb, target_alpha, landmarks = new_driver, new_rgb, new_alpha, new_landmarks
            if config.native_batch:
                own_driver, own_rgb, own_alpha, avatar, own_landmarks = next(native)
                own = slice(0, config.native_batch)
                identity = torch.cat([student.identity[avatar[own]], identity])
                driver = torch.cat([own_driver[own], driver])
                target_rgb, target_alpha = torch.cat([own_rgb[own], target_rgb]), torch.cat([own_alpha[own], target_alpha])
                landmarks = torch.cat([own_landmarks[own], landmarks])
            rgb, alpha = student.drive(augment(driver, generator=generator), identity)
            terms = objective.generator_terms(rgb, alpha, target_rgb, target_alpha, landmarks)
            optimiser.zero_grad(set_to_none=True)
            terms.total.backward()
            optimiser.step()
            scheduler.step()
            steps.advance()
            if steps.due(config.log_every):
                tail = slice(config.native_batch, None)  # the new identities' share of the batch
                with torch.no_grad():
                    new_l1 = float(region_weighted_l1(rgb[tail], target_rgb[tail], landmarks[tail], region_weight=config.objective.region))
                steps.log(terms.as_floats(), learning_rate=scheduler.get_last_lr()[0], extra={"l1_new": new_l1, "shots": shots})
            if steps.due(config.checkpoint_every):
                save_checkpoint(
                    {
                        "model": student.state_dict(),
                        "embedder": embedder.state_dict(),
                        **optimiser_state(optimiser, scheduler, steps.step),
                        "model_config": asdict(student.config),
                        "embedder_config": asdict(embedder.config),
                        "train_config": asdict(config),
                        "commands": commands,
                        "avatar_names": list(dataset.meta.avatar_names),
                    },
                    run.checkpoint_path,
                    kind=STUDENT_KIND,
                )
                with torch.no_grad():
                    rows = [torch.stack([d, o, t]) for d, o, t in zip(driver[-4:], rgb[-4:].detach(), target_rgb[-4:])]
                    first_frames = frames[-4:, 0]  # the portraits the identities were embedded from
                    tiles = torch.cat(
                        [torch.cat([f[None], r]) for f, r in zip(first_frames, rows)]
                    )  # per row: portrait, driver, output, target
                run.save_samples(contact_sheet(tiles.cpu(), columns=4))
    return steps.summary(run_dir=run.path, batch_size=config.native_batch + config.new_batch)
