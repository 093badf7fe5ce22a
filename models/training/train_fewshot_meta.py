"""Meta-learn the few-shot talking heads (Zakharov et al. 2019, DESIGN §4.4): embedder, generator and projection
discriminator together, in K-shot episodes (models/data/fewshot_episodes.py).

Per step, B episodes:
    ê_i = mean over K frames of E(frame, landmark image)                     B×K frames -> B×E
    output = G(target landmark image, ê_i)                                    -> rgb B×3×H×W, alpha B×1×H×W
    generator step (G, E): content + adversarial + feature matching + embedding match (fewshot_objective.py)
    discriminator step (D with its rows W): hinge on target vs output, + embedding match pulling W_i toward ê_i
Two Adam optimisers (β 0.5, 0.999; the discriminator's learning rate twice the generator's, as the paper's two
time-scales), both cosine-annealed.

A run folder as every trainer's (run_folder.py): config.json, log.jsonl, checkpoint.pt (kind fewshot-talking-heads:
generator, embedder, discriminator and both optimisers; resumable), samples.png (per row: the first embedded frame,
the target's landmark image, the output, the target), tensorboard/ (the losses and the samples). One plain process, or
torchrun's N (distributed.py: DistributedDataParallel over the embedder-and-generator pass and over the discriminator,
each rank its own shard of the episodes; rank 0 logs and writes). SyntheticHeads videos are rendered when the run starts (the
same ones again on resume: a pure function of the seed).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.checkpoints import FEWSHOT_KIND, fewshot_from_checkpoint, save_checkpoint
from models.data.fewshot_episodes import EpisodeSample, SyntheticEpisodes, SyntheticEpisodesConfig, VideoEpisodes
from models.data.heads import contact_sheet
from models.fewshot.config import FEWSHOT_PRESETS, fewshot_config
from models.fewshot.discriminator import FewShotDiscriminator
from models.fewshot.embedder import FewShotEmbedder
from models.fewshot.generator import FewShotGenerator
from models.training.common import TrainingError, TrainSummary, adam_with_cosine
from models.training.distributed import DEVICES, Processes, distributed_batches, mean_over_processes, start_processes, stop_processes
from models.training.fewshot_objective import FewShotBatch, FewShotObjective
from models.training.fewshot_settings import FewShotMetaConfig
from models.training.run_folder import RunFolder, optimiser_state, restore_optimiser_state, summary_writer
from models.training.student_objective import load_loss_networks

ADAM_BETAS = (0.5, 0.999)


def check_meta_config(config: FewShotMetaConfig) -> None:
    if config.preset not in FEWSHOT_PRESETS:
        raise TrainingError(f"unknown few-shot preset {config.preset!r} (known: {', '.join(FEWSHOT_PRESETS)})")
    if config.steps < 1 or config.batch < 1 or not 1 <= config.shots <= 32:
        raise TrainingError("--steps and --batch must be at least 1, --shots in [1, 32]")
    if not config.data and config.frames_per_video < config.shots + 1:
        raise TrainingError(f"--frames-per-video ({config.frames_per_video}) must exceed --shots ({config.shots})")
    if config.data and not Path(config.data).is_dir():
        raise TrainingError(f"--data {config.data}: no such folder (a `megalive-train prepare` output)")
    if config.device not in DEVICES:
        raise TrainingError(f"--device must be one of {', '.join(DEVICES)}, got {config.device!r}")


def episodes_for(config: FewShotMetaConfig, *, resolution: int, progress: bool) -> SyntheticEpisodes | VideoEpisodes:
    if config.data:
        try:
            return VideoEpisodes(config.data, resolution=resolution, shots=config.shots, seed=config.seed)
        except ValueError as error:
            raise TrainingError(str(error)) from None
    episodes = SyntheticEpisodesConfig(
        resolution=resolution, shots=config.shots, identities=config.identities, frames_per_video=config.frames_per_video, seed=config.seed
    )
    return SyntheticEpisodes(config=episodes, progress=progress)


class EpisodePass(nn.Module):
    """The generator's side of a step as one module (what DistributedDataParallel wraps): K frames -> ê, then the target's
    landmark image and ê -> the output. Returns rgb B×3×H×W, alpha B×1×H×W, ê B×E."""

    def __init__(self, *, embedder: FewShotEmbedder, generator: FewShotGenerator) -> None:
        super().__init__()
        self.embedder, self.generator = embedder, generator

    def forward(self, frames: Tensor, frame_landmark_images: Tensor, landmark_image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        embedding = self.embedder(frames, frame_landmark_images)  # B×K×3×H×W -> B×E
        output = self.generator(landmark_image, embedding)
        return output.rgb, output.alpha, embedding


def train_fewshot_meta(config: FewShotMetaConfig, *, progress: bool = True) -> TrainSummary:
    check_meta_config(config)
    processes = start_processes(config.device)
    try:
        return _train(config, processes=processes, progress=progress and processes.main)
    finally:
        stop_processes(processes)


def _train(config: FewShotMetaConfig, *, processes: Processes, progress: bool) -> TrainSummary:
    run = RunFolder(config.run_dir)
    device = processes.device
    checkpoint = run.saved_checkpoint()
    resolution = FEWSHOT_PRESETS[config.preset].resolution
    dataset = episodes_for(config, resolution=resolution, progress=progress)
    torch.manual_seed(config.seed)  # the same initial weights in every process
    random.seed(config.seed)
    if checkpoint is not None:
        networks = fewshot_from_checkpoint(checkpoint, path=run.checkpoint_path, expect_preset=config.preset)
        if networks.config.num_videos != dataset.num_videos:
            raise TrainingError(f"{run.checkpoint_path}: trained on {networks.config.num_videos} videos, the data has {dataset.num_videos}")
        generator, embedder, discriminator = networks.generator, networks.embedder, networks.discriminator
        model_config = networks.config
    else:
        model_config = fewshot_config(config.preset, num_videos=dataset.num_videos)
        generator, embedder, discriminator = (
            FewShotGenerator(config=model_config),
            FewShotEmbedder(config=model_config),
            FewShotDiscriminator(config=model_config),
        )
    generator.to(device).train(), embedder.to(device).train(), discriminator.to(device).train()
    networks_for_loss = load_loss_networks(config.content, allow_missing=config.allow_missing_nets)
    objective = FewShotObjective(
        content=config.content, losses=config.losses, networks=networks_for_loss, perceptual_size=config.perceptual_size
    )
    objective.content.to(device)
    optimiser, scheduler = adam_with_cosine(
        [*generator.parameters(), *embedder.parameters()],
        learning_rate=config.learning_rate,
        final_learning_rate=config.final_learning_rate,
        steps=config.steps,
        betas=ADAM_BETAS,
    )
    d_optimiser, d_scheduler = adam_with_cosine(
        discriminator.parameters(),
        learning_rate=config.discriminator_learning_rate,
        final_learning_rate=config.final_learning_rate,
        steps=config.steps,
        betas=ADAM_BETAS,
    )
    step = 0
    if checkpoint is not None:
        step = restore_optimiser_state(checkpoint, optimiser, scheduler)
        d_optimiser.load_state_dict(checkpoint["d_optimiser"])
        d_scheduler.load_state_dict(checkpoint["d_scheduler"])
    episode_pass: nn.Module = EpisodePass(embedder=embedder, generator=generator)
    judge: nn.Module = discriminator
    if processes.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        episode_pass = DistributedDataParallel(episode_pass, device_ids=device_ids)
        judge = DistributedDataParallel(discriminator, device_ids=device_ids)
    if processes.main:
        run.write_config(
            {
                "train": asdict(config),
                "model": asdict(model_config),
                "objective": objective.describe(networks_for_loss),
                "data": dataset.describe(),
                "world_size": processes.world_size,
                "device": str(device),
            }
        )
        for network, status in networks_for_loss.status.items():
            if status != "active":
                tqdm.write(f"loss network {network}: {status}")
    writer = summary_writer(run.path, purge_step=step if step > 0 else None) if processes.main else None
    batches = distributed_batches(dataset, batch_size=config.batch, processes=processes, seed=config.seed, workers=0, start_step=step)
    stepping = run.progress(total=config.steps, step=step, description="fewshot-meta", show=progress, write_log=processes.main)
    with contextlib.closing(batches), stepping as steps, contextlib.ExitStack() as cleanup:
        if writer is not None:
            cleanup.callback(writer.close)
        while steps.running:
            episode = EpisodeSample(*(field.to(device) for field in next(batches)))
            batch = FewShotBatch(
                target=episode.target,
                target_alpha=episode.target_alpha,
                target_landmarks=episode.target_landmarks,
                landmark_image=episode.target_landmark_image,
            )
            rgb, alpha, embedding = episode_pass(episode.frames, episode.frame_landmark_images, episode.target_landmark_image)
            rows = discriminator.video_rows(episode.video)  # B×E: W_i
            terms = objective.generator_terms(rgb, alpha, batch, discriminator=discriminator, rows=rows, embedding=embedding)
            optimiser.zero_grad(set_to_none=True)
            terms.total.backward()
            optimiser.step()
            scheduler.step()
            judged = judge(
                torch.cat([episode.target, rgb.detach()]), episode.target_landmark_image.repeat(2, 1, 1, 1), episode.video.repeat(2)
            )
            real, fake = judged.realism.chunk(2)  # 2B -> B, B
            d_terms = objective.discriminator_loss(real, fake, rows=discriminator.video_rows(episode.video), embedding=embedding)
            d_optimiser.zero_grad(set_to_none=True)
            d_terms["total"].backward()
            d_optimiser.step()
            d_scheduler.step()
            steps.advance()
            if steps.due(config.log_every):
                logged = terms.as_floats() | {name: float(value.detach()) for name, value in d_terms.items() if name != "total"}
                logged = mean_over_processes(logged, processes)
                generator_names = terms.as_floats().keys()
                steps.log(
                    {name: logged[name] for name in generator_names},
                    learning_rate=scheduler.get_last_lr()[0],
                    extra={name: value for name, value in logged.items() if name not in generator_names},
                )
                if writer is not None:
                    for name, value in logged.items():
                        writer.add_scalar(f"loss/{name}", value, steps.step)
            if steps.due(config.checkpoint_every) and processes.main:
                save_checkpoint(
                    {
                        "generator": generator.state_dict(),
                        "embedder": embedder.state_dict(),
                        "discriminator": discriminator.state_dict(),
                        **optimiser_state(optimiser, scheduler, steps.step),
                        "d_optimiser": d_optimiser.state_dict(),
                        "d_scheduler": d_scheduler.state_dict(),
                        "model_config": asdict(model_config),
                        "train_config": asdict(config),
                        "commands": [config.command],
                    },
                    run.checkpoint_path,
                    kind=FEWSHOT_KIND,
                )
                sheet = episode_sheet(episode, rgb.detach())
                run.save_samples(sheet)
                if writer is not None:
                    writer.add_image("samples", sheet, steps.step)
    return steps.summary(run_dir=run.path, batch_size=config.batch * processes.world_size)


def episode_sheet(episode: EpisodeSample, rgb: Tensor, *, rows: int = 4) -> Tensor:
    """Per episode: its first embedded frame, the target's landmark image, the output, the target (a 4-column sheet)."""
    count = min(rows, len(rgb))
    tiles = torch.stack(
        [episode.frames[:count, 0], episode.target_landmark_image[:count], rgb[:count], episode.target[:count]], dim=1
    )  # n×4×3×H×W
    return contact_sheet(tiles.flatten(0, 1).float().cpu(), columns=4)
