"""Train the real-time student in cross-driving mode (DESIGN §4.3).

Each step: a driver frame of an identity that is not an avatar (colour-jittered and mildly warped so
its identity cannot leak through), the avatar index, and the target: that avatar doing the driver's
motion. The target source is pluggable: `renderer` (SyntheticHeads ground truth, rendered into a
paired dataset by `megalive-train synth`) or `teacher` (distillation: a frozen MegaPortraits base
model's reenactment of the avatar's neutral frame by the clean driver, over the avatar's background
plate; models/megaportraits/distill.py). Losses: L1 + (1 - SSIM) on rgb, L1 on the alpha mask, and a perceptual term only when
a local VGG19 weights file is given (absent otherwise, and the run's config says so).

A run folder holds config.json (the resolved config and the exact command), checkpoint.pt (model,
optimiser, scheduler, step, RNG states; tensors only, loaded with weights_only=True), log.jsonl
(one line per logged step) and samples.png. Checkpoints are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from tqdm import tqdm

from models.checkpoints import STUDENT_KIND, load_checkpoint, save_checkpoint, student_from_checkpoint
from models.data.heads import contact_sheet
from models.data.paired import PairedHeads, load_identities, save_png
from models.megaportraits.distill import TeacherAvatars, TeacherTargets
from models.megaportraits.student import Student, student_config
from models.training.common import TrainingError, TrainSummary, adam_with_cosine, endless_batches

TARGET_SOURCES = ("renderer", "teacher")


@dataclass(frozen=True)
class StudentTrainConfig:
    data: str
    run_dir: str
    preset: str = "cpu256"
    target: str = "renderer"
    steps: int = 3000
    batch_size: int = 8
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-5
    l1_weight: float = 1.0
    ssim_weight: float = 1.0
    mask_weight: float = 1.0
    vgg_weights: str | None = None
    teacher: str | None = None  # base-model checkpoint (with target "teacher")
    colour_jitter: float = 0.3
    warp: float = 0.04
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 200
    workers: int = 1
    command: str = ""
    perceptual: str = "absent: no local VGG19 weights file given"  # recorded in config.json: which loss networks ran


def check_student_config(config: StudentTrainConfig) -> None:
    if config.target not in TARGET_SOURCES:
        raise TrainingError(f"unknown target source {config.target!r} (known: {', '.join(TARGET_SOURCES)})")
    if config.target == "teacher" and config.teacher is None:
        raise TrainingError("--target teacher needs --teacher RUN/checkpoint.pt (a `megalive-train base` checkpoint)")
    if config.target == "renderer" and config.teacher is not None:
        raise TrainingError("--teacher is only used with --target teacher")
    if config.teacher is not None and not Path(config.teacher).is_file():
        raise TrainingError(f"--teacher {config.teacher}: no such file")
    if config.vgg_weights is not None:
        raise TrainingError("a perceptual VGG19 backbone is not supported yet; drop --vgg-weights (the run records it as absent)")
    if config.steps < 1 or config.batch_size < 1:
        raise TrainingError("--steps and --batch must be at least 1")
    if not 0 <= config.colour_jitter <= 1:  # `not` of the range: NaN is refused too
        raise TrainingError(f"--jitter must be in [0, 1], got {config.colour_jitter}")
    if not 0 <= config.warp <= 0.2:
        raise TrainingError(f"--warp must be in [0, 0.2], got {config.warp}")


def augment_drivers(driver: torch.Tensor, *, jitter: float, warp: float, generator: torch.Generator) -> torch.Tensor:
    """Colour jitter (brightness, contrast, saturation, per-channel gain) and a mild random affine warp.

    B×3×H×W in [0,1] -> same. Strong colour changes stop skin/hair/background colours leaking from the
    driver; the small anisotropic scale/shift stops face proportions leaking, while the motion stays."""
    batch = driver.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1  # in [-1, 1]

    grey = driver.mean(dim=1, keepdim=True)  # B×1×H×W
    saturation = 1 + jitter * uniform(batch, 1, 1, 1)
    out = grey + (driver - grey) * saturation
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * (1 + jitter * uniform(batch, 1, 1, 1)) + mean  # contrast
    out = out * (1 + jitter * uniform(batch, 3, 1, 1)) + 0.5 * jitter * uniform(batch, 1, 1, 1)  # gains, brightness
    if warp > 0:
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0] = 1 + warp * uniform(batch)
        theta[:, 1, 1] = 1 + warp * uniform(batch)
        theta[:, :, 2] = 0.5 * warp * uniform(batch, 2)
        grid = F.affine_grid(theta, list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.clamp(0, 1)


@dataclass(frozen=True)
class StudentLosses:
    total: torch.Tensor
    l1: torch.Tensor
    ssim: torch.Tensor
    mask: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {name: float(getattr(self, name).detach()) for name in ("total", "l1", "ssim", "mask")}


class ReconstructionWeights(Protocol):
    """The weights student_losses reads (the student's and the adapters' training configs have them)."""

    l1_weight: float
    ssim_weight: float
    mask_weight: float


def student_losses(
    rgb: torch.Tensor, alpha: torch.Tensor, target_rgb: torch.Tensor, target_alpha: torch.Tensor, config: ReconstructionWeights
) -> StudentLosses:
    l1 = F.l1_loss(rgb, target_rgb)
    structural = 1 - ssim(rgb, target_rgb, data_range=1.0, size_average=True)
    mask = F.l1_loss(alpha, target_alpha)
    total = config.l1_weight * l1 + config.ssim_weight * structural + config.mask_weight * mask
    return StudentLosses(total=total, l1=l1, ssim=structural, mask=mask)


def teacher_targets(path: Path, dataset: PairedHeads) -> TeacherTargets:
    """The distillation targets for ``dataset``'s avatars from a base-model checkpoint."""
    avatars = load_identities(dataset.meta.root / "avatars.npz")
    return TeacherTargets(
        teacher=TeacherAvatars.from_checkpoint(path), avatars=avatars, resolution=dataset.meta.resolution, checkpoint=path
    )


def train_student(config: StudentTrainConfig, *, progress: bool = True) -> TrainSummary:
    check_student_config(config)
    dataset = PairedHeads(root=Path(config.data))
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / "checkpoint.pt"
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model_config = student_config(config.preset, num_avatars=dataset.meta.num_avatars)
    if model_config.resolution != dataset.meta.resolution:
        raise TrainingError(f"preset {config.preset!r} is {model_config.resolution} px but the dataset is {dataset.meta.resolution} px")
    model = Student(config=model_config)
    schedule = {"learning_rate": config.learning_rate, "final_learning_rate": config.final_learning_rate, "steps": config.steps}
    optimiser, scheduler = adam_with_cosine(model.parameters(), **schedule)
    step = 0
    if checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path)
        saved = checkpoint.get("train_config", {})
        if any(
            saved.get(name, default) != getattr(config, name)
            for name, default in (("preset", None), ("data", None), ("target", "renderer"), ("teacher", None))
        ):
            raise TrainingError(
                f"{checkpoint_path} belongs to another run (preset {saved.get('preset')!r}, data {saved.get('data')!r}, "
                f"target {saved.get('target', 'renderer')!r}); use a new --run folder"
            )
        model = student_from_checkpoint(checkpoint)
        optimiser, scheduler = adam_with_cosine(model.parameters(), **schedule)
        optimiser.load_state_dict(checkpoint["optimiser"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        step = int(checkpoint["step"])
        torch.set_rng_state(checkpoint["rng_torch"])
    teacher = None if config.teacher is None else teacher_targets(Path(config.teacher), dataset)
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "train": asdict(config),
                "model": asdict(model_config),
                "dataset": {"root": config.data, "command": dataset.meta.command, "avatar_names": list(dataset.meta.avatar_names)},
                "targets": "renderer ground truth" if teacher is None else teacher.describe(),
            },
            indent=2,
        )
        + "\n"
    )
    loader = endless_batches(dataset, batch_size=config.batch_size, workers=config.workers, seed=config.seed, step=step)
    augment_generator = torch.Generator().manual_seed(config.seed * 104729 + step)
    model.train()
    losses: StudentLosses | None = None
    began, first_step = time.perf_counter(), step
    with (
        tqdm(total=config.steps, initial=step, desc="student", unit="step", disable=not progress) as bar,
        open(run_dir / "log.jsonl", "a", encoding="utf-8") as log,
    ):
        while step < config.steps:
            driver, target_rgb, target_alpha, avatar = next(loader)
            if teacher is not None:  # distillation: the teacher reenacts the clean driver
                target_rgb, target_alpha = teacher(driver, avatar)
            driver = augment_drivers(driver, jitter=config.colour_jitter, warp=config.warp, generator=augment_generator)
            rgb, alpha = model(driver, avatar)
            losses = student_losses(rgb, alpha, target_rgb, target_alpha, config)
            optimiser.zero_grad(set_to_none=True)
            losses.total.backward()
            optimiser.step()
            scheduler.step()
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                floats = losses.as_floats()
                bar.set_postfix(loss=f"{floats['total']:.4f}", l1=f"{floats['l1']:.4f}")
                log.write(json.dumps({"step": step, "lr": scheduler.get_last_lr()[0], **floats}) + "\n")
                log.flush()
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_checkpoint(
                    {
                        "model": model.state_dict(),
                        "optimiser": optimiser.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": step,
                        "rng_torch": torch.get_rng_state(),
                        "model_config": asdict(model_config),
                        "train_config": asdict(config),
                        "avatar_names": list(dataset.meta.avatar_names),
                    },
                    checkpoint_path,
                    kind=STUDENT_KIND,
                )
                with torch.no_grad():
                    tiles = torch.stack([driver[:4], rgb[:4].detach(), target_rgb[:4]], dim=1).flatten(0, 1)  # 4×3 tiles
                save_png(contact_sheet(tiles, columns=3), run_dir / "samples.png")
    elapsed = time.perf_counter() - began
    rate = (step - first_step) * config.batch_size / elapsed if elapsed > 0 and step > first_step else math.nan
    return TrainSummary(run_dir=run_dir, steps=step, final_losses=losses.as_floats() if losses else {}, samples_per_second=rate)
