"""`megalive-train adapter`: train a driver adapter (ARKit curves or landmarks) for a trained student.

The student is frozen. SyntheticHeads pairs give exact triples: the driver picture, the same motion
as ARKit curves and the driver's landmarks, and the avatar's ground truth. Two losses:

- driving code: the adapter's feature pyramid against the student encoder's pyramid of the driver
  picture (each level's L1 divided by its mean magnitude, so every level counts alike), which
  teaches the adapter the student's own language;
- picture: the frozen decoder's output from the adapter's code against the ground truth (L1 +
  (1 - SSIM) + mask L1, as the student's), which is what the user sees.

Small Gaussian noise on the signals in training makes the adapter tolerant of real capture noise.
The run folder is a student run's: config.json, checkpoint.pt (adapter weights, optimiser,
scheduler, step, RNG, the student checkpoint's path and hash), log.jsonl, samples.png.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from models.checkpoints import ADAPTER_KIND, adapter_from_checkpoint, load_student, save_checkpoint
from models.data.heads import contact_sheet
from models.data.paired import PairedSignals
from models.megaportraits.adapters import (
    ADAPTER_KINDS,
    DriverAdapter,
    adapter_config,
    arkit_features,
    landmark_features,
    pyramid_distance,
)
from models.megaportraits.student import Student
from models.training.common import TrainingError, TrainSummary, adam_with_cosine, endless_batches
from models.training.run_folder import RunFolder, optimiser_state, restore_optimiser_state
from models.training.train_student import student_losses


@dataclass(frozen=True)
class AdapterTrainConfig:
    kind: str
    student: str  # the student's checkpoint.pt
    data: str
    run_dir: str
    steps: int = 1500
    batch_size: int = 8
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-5
    pyramid_weight: float = 1.0
    l1_weight: float = 1.0
    ssim_weight: float = 1.0
    mask_weight: float = 1.0
    curve_noise: float = 0.01  # std of noise on blendshapes (and, in radians, on head angles)
    landmark_noise: float = 0.002  # std of noise on landmarks, in crop units (0.5 px at 256)
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 200
    workers: int = 1
    command: str = ""


def check_adapter_config(config: AdapterTrainConfig) -> None:
    if config.kind not in ADAPTER_KINDS:
        raise TrainingError(f"unknown adapter kind {config.kind!r} (known: {', '.join(ADAPTER_KINDS)})")
    if config.steps < 1 or config.batch_size < 1:
        raise TrainingError("--steps and --batch must be at least 1")


def file_digest(path: Path) -> str:
    """sha256 of a file, short: ties an adapter to the exact student it was trained against."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def adapter_features(kind: str, batch: Any, *, generator: torch.Generator | None, config: AdapterTrainConfig) -> torch.Tensor:
    """A SignalPair batch -> the adapter's input for ``kind`` (with training noise when a generator is given)."""
    if kind == "arkit":
        curves, framing = batch.curves, batch.framing
        if generator is not None:
            curves = curves + config.curve_noise * torch.randn(curves.shape, generator=generator)
            curves[:, :52] = curves[:, :52].clamp(0, 1)
        return arkit_features(curves, framing)
    landmarks = batch.landmarks
    if generator is not None:
        landmarks = landmarks + config.landmark_noise * torch.randn(landmarks.shape, generator=generator)
    return landmark_features(landmarks)


def _frozen_student(path: Path) -> Student:
    student = load_student(path).eval()
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    return student


def train_adapter(config: AdapterTrainConfig, *, progress: bool = True) -> TrainSummary:
    check_adapter_config(config)
    student_path = Path(config.student)
    student = _frozen_student(student_path)
    student_digest = file_digest(student_path)
    dataset = PairedSignals(root=Path(config.data))
    if dataset.meta.resolution != student.config.resolution or dataset.meta.num_avatars != student.num_avatars:
        raise TrainingError(
            f"the dataset ({dataset.meta.resolution} px, {dataset.meta.num_avatars} avatars) does not match the student "
            f"({student.config.resolution} px, {student.num_avatars} avatars)"
        )
    run = RunFolder(config.run_dir)
    torch.manual_seed(config.seed)
    model_config = adapter_config(config.kind, student=student.config)
    adapter = DriverAdapter(config=model_config)
    schedule = {"learning_rate": config.learning_rate, "final_learning_rate": config.final_learning_rate, "steps": config.steps}
    optimiser, scheduler = adam_with_cosine(adapter.parameters(), **schedule)
    step = 0
    checkpoint = run.saved_checkpoint()
    if checkpoint is not None:
        if checkpoint.get("student_digest") != student_digest or checkpoint.get("train_config", {}).get("kind") != config.kind:
            raise TrainingError(f"{run.checkpoint_path} belongs to another run (another student or kind); use a new --run folder")
        adapter = adapter_from_checkpoint(checkpoint)
        optimiser, scheduler = adam_with_cosine(adapter.parameters(), **schedule)
        step = restore_optimiser_state(checkpoint, optimiser, scheduler)
    run.write_config({"train": asdict(config), "adapter": asdict(model_config), "student_digest": student_digest})
    loader = endless_batches(dataset, batch_size=config.batch_size, workers=config.workers, seed=config.seed, step=step)
    noise_generator = torch.Generator().manual_seed(config.seed * 104729 + step)
    adapter.train()
    with run.progress(total=config.steps, step=step, description=f"adapter {config.kind}", show=progress) as steps:
        while steps.running:
            batch = next(loader)
            with torch.no_grad():
                target_code = student.encoder(batch.driver)
            code = adapter(adapter_features(config.kind, batch, generator=noise_generator, config=config))
            rgb, alpha = student.decode(code, batch.avatar)
            losses = student_losses(rgb, alpha, batch.target_rgb, batch.target_alpha, config)
            code_loss = pyramid_distance(code, target_code)
            total = losses.total + config.pyramid_weight * code_loss
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            optimiser.step()
            scheduler.step()
            steps.advance()
            if steps.due(config.log_every):
                # the adapter's total adds the code term to the student's reconstruction losses
                floats = {**losses.as_floats(), "total": float(total.detach()), "code": float(code_loss.detach())}
                steps.log(floats, learning_rate=scheduler.get_last_lr()[0])
            if steps.due(config.checkpoint_every):
                save_checkpoint(
                    {
                        "adapter": adapter.state_dict(),
                        **optimiser_state(optimiser, scheduler, steps.step),
                        "adapter_config": asdict(model_config),
                        "train_config": asdict(config),
                        "student": str(student_path),
                        "student_digest": student_digest,
                    },
                    run.checkpoint_path,
                    kind=ADAPTER_KIND,
                )
                with torch.no_grad():
                    truth = student(batch.driver[:4], batch.avatar[:4]).rgb
                    tiles = torch.stack([batch.driver[:4], truth, rgb[:4].detach(), batch.target_rgb[:4]], dim=1).flatten(0, 1)
                run.save_samples(contact_sheet(tiles, columns=4))  # driver | student on it | adapter | truth
    return steps.summary(run_dir=run.path, batch_size=config.batch_size)
