"""Train the real-time student in cross-driving mode (DESIGN §4.3).

Each step: a driver frame of an identity that is not an avatar (colour-jittered and mildly warped so
its identity cannot leak through), the avatar index, and the target: that avatar doing the driver's
motion. The target source is pluggable: `renderer` (SyntheticHeads ground truth, rendered into a
paired dataset by `megalive-train synth`) or `teacher` (distillation: a frozen MegaPortraits base
model's reenactment of the avatar's neutral frame by the clean driver, over the avatar's background
plate; models/megaportraits/distill.py). The objective (student_objective.py): L1 weighted up on the eyes
and mouth, 1 - SSIM, the alpha mask's L1, perceptual (EfficientNet-Lite0), face (dlib ResNet), and a PatchGAN's
hinge and feature matching; the discriminator trains beside the student.

On CUDA (``device``), with ``amp`` the forward passes run in bfloat16 autocast; on the CPU in float32.

A run folder holds config.json (the resolved config and the exact command), checkpoint.pt (model,
optimiser, scheduler, step, RNG states; tensors only, loaded with weights_only=True), log.jsonl
(one line per logged step) and samples.png. Checkpoints are written to a temporary name and renamed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from models.checkpoints import STUDENT_KIND, check_kind, load_checkpoint, save_checkpoint, student_from_checkpoint
from models.data.heads import contact_sheet
from models.data.paired import PairedHeads, load_identities
from models.megaportraits.distill import TeacherAvatars, TeacherTargets
from models.megaportraits.student import Student, student_config
from models.training.augment import DriverAugmentation
from models.training.common import TrainingError, TrainSummary, adam_with_cosine, endless_batches
from models.training.distributed import DEVICES, resolve_device
from models.training.run_folder import RunFolder, optimiser_state, restore_optimiser_state
from models.training.student_objective import STUDENT_DISCRIMINATORS, ObjectiveWeights, StudentObjective, load_loss_networks

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
    objective: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    perceptual_size: int = 128  # frames area-resized to this before the perceptual network (0: full size); CPU cost
    discriminator: str = "small"  # STUDENT_DISCRIMINATORS
    allow_missing_nets: bool = False  # train without a loss network whose weights are missing (the run records it)
    discriminator_learning_rate: float = 2e-4
    device: str = "auto"  # auto (CUDA when there is one), cpu, cuda
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    teacher: str | None = None  # base-model checkpoint (with target "teacher")
    init: str | None = None  # a fresh run starts from this student checkpoint's weights where names and shapes agree
    colour_jitter: float = 0.3
    warp: float = 0.04
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 200
    workers: int = 1
    command: str = ""


def check_student_config(config: StudentTrainConfig) -> None:
    if config.target not in TARGET_SOURCES:
        raise TrainingError(f"unknown target source {config.target!r} (known: {', '.join(TARGET_SOURCES)})")
    if config.target == "teacher" and config.teacher is None:
        raise TrainingError("--target teacher needs --teacher RUN/checkpoint.pt (a `megalive-train base` checkpoint)")
    if config.target == "renderer" and config.teacher is not None:
        raise TrainingError("--teacher is only used with --target teacher")
    for option, path in (("--teacher", config.teacher), ("--init", config.init)):
        if path is not None and not Path(path).is_file():
            raise TrainingError(f"{option} {path}: no such file")
    if config.discriminator not in STUDENT_DISCRIMINATORS:
        raise TrainingError(f"--discriminator must be one of {', '.join(STUDENT_DISCRIMINATORS)}, got {config.discriminator!r}")
    if not (config.perceptual_size == 0 or 32 <= config.perceptual_size <= 1024):
        raise TrainingError(f"--perceptual-size must be 0 or in [32, 1024], got {config.perceptual_size}")
    if config.device not in DEVICES:
        raise TrainingError(f"--device must be one of {', '.join(DEVICES)}, got {config.device!r}")
    if config.steps < 1 or config.batch_size < 1:
        raise TrainingError("--steps and --batch must be at least 1")
    if not 0 <= config.colour_jitter <= 1:  # `not` of the range: NaN is refused too
        raise TrainingError(f"--jitter must be in [0, 1], got {config.colour_jitter}")
    if not 0 <= config.warp <= 0.2:
        raise TrainingError(f"--warp must be in [0, 0.2], got {config.warp}")


def teacher_targets(path: Path, dataset: PairedHeads) -> TeacherTargets:
    """The distillation targets for ``dataset``'s avatars from a base-model checkpoint."""
    avatars = load_identities(dataset.meta.root / "avatars.npz")
    return TeacherTargets(
        teacher=TeacherAvatars.from_checkpoint(path), avatars=avatars, resolution=dataset.meta.resolution, checkpoint=path
    )


def initial_weights(model: Student, discriminator: torch.nn.Module | None, path: Path, *, avatar_names: list[str]) -> list[str]:
    """Load another student run's weights into a fresh ``model`` (and its discriminator) wherever a tensor's name and
    shape agree: cpu256 into cpu512 fills all but the stage that upsamples the last H/4 features (it starts as plain
    bilinear upsampling). The avatars must be the same, in the same order. Returns the model's tensors left as initialised."""
    checkpoint = load_checkpoint(path)
    check_kind(checkpoint, STUDENT_KIND)
    if list(checkpoint.get("avatar_names") or []) != avatar_names:
        raise TrainingError(f"--init {path}: its avatars {checkpoint.get('avatar_names')} are not this dataset's {avatar_names}")
    fresh = []
    for module, saved in ((model, checkpoint["model"]), (discriminator, checkpoint.get("discriminator") or {})):
        if module is None:
            continue
        state = module.state_dict()
        agreeing = {name: value for name, value in saved.items() if name in state and state[name].shape == value.shape}
        module.load_state_dict({**state, **agreeing})
        if module is model:
            fresh = [name for name in state if name not in agreeing]
    if len(fresh) == len(model.state_dict()):
        raise TrainingError(f"--init {path}: none of its tensors fits this preset")
    return fresh


def training_commands(checkpoint: dict | None, command: str) -> list[str]:
    """Every command that trained a run, in order: a run resumed with other options (a second phase with another
    objective, say) keeps the first phase's command too, so the model's provenance names both. A plain resume of
    the same command is not repeated."""
    if checkpoint is None:
        return [command]
    earlier = list(checkpoint.get("commands") or [checkpoint.get("train_config", {}).get("command", "")])
    return earlier if earlier and earlier[-1] == command else [*earlier, command]


def train_student(config: StudentTrainConfig, *, progress: bool = True) -> TrainSummary:
    check_student_config(config)
    dataset = PairedHeads(root=Path(config.data))
    run = RunFolder(config.run_dir)
    device = resolve_device(config.device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model_config = student_config(config.preset, num_avatars=dataset.meta.num_avatars)
    if model_config.resolution != dataset.meta.resolution:
        raise TrainingError(f"preset {config.preset!r} is {model_config.resolution} px but the dataset is {dataset.meta.resolution} px")
    networks = load_loss_networks(config.objective, allow_missing=config.allow_missing_nets)
    model = Student(config=model_config)
    objective = StudentObjective(
        weights=config.objective,
        networks=networks,
        discriminator=STUDENT_DISCRIMINATORS[config.discriminator],
        perceptual_size=config.perceptual_size,
    )
    checkpoint = run.saved_checkpoint()
    if checkpoint is not None:
        saved = checkpoint.get("train_config", {})
        if any(
            saved.get(name, default) != getattr(config, name)
            for name, default in (("preset", None), ("data", None), ("target", "renderer"), ("teacher", None))
        ):
            raise TrainingError(
                f"{run.checkpoint_path} belongs to another run (preset {saved.get('preset')!r}, data {saved.get('data')!r}, "
                f"target {saved.get('target', 'renderer')!r}); use a new --run folder"
            )
        if (objective.discriminator is not None) != ("discriminator" in checkpoint):
            raise TrainingError(f"{run.checkpoint_path} was trained with another objective (discriminator); use a new --run folder")
        model = student_from_checkpoint(checkpoint)
        if objective.discriminator is not None:
            objective.discriminator.load_state_dict(checkpoint["discriminator"])
    elif config.init is not None:
        fresh = initial_weights(model, objective.discriminator, Path(config.init), avatar_names=list(dataset.meta.avatar_names))
        tqdm.write(f"--init {config.init}: all weights but {', '.join(fresh) or 'none'}")
    model, objective = model.to(device), objective.to(device)
    schedule = {"final_learning_rate": config.final_learning_rate, "steps": config.steps}
    optimiser, scheduler = adam_with_cosine(model.parameters(), learning_rate=config.learning_rate, **schedule)
    judge = None
    if objective.discriminator is not None:
        judge = adam_with_cosine(
            objective.discriminator.parameters(), learning_rate=config.discriminator_learning_rate, betas=(0.5, 0.999), **schedule
        )
    step = 0
    if checkpoint is not None:
        step = restore_optimiser_state(checkpoint, optimiser, scheduler)
        if judge is not None:
            judge[0].load_state_dict(checkpoint["optimiser_discriminator"])
            judge[1].load_state_dict(checkpoint["scheduler_discriminator"])
    commands = training_commands(checkpoint, config.command)
    teacher = None if config.teacher is None else teacher_targets(Path(config.teacher), dataset)
    run.write_config(
        {
            "train": asdict(config),
            "model": asdict(model_config),
            "objective": objective.describe(networks),
            "device": str(device),
            "dataset": {"root": config.data, "command": dataset.meta.command, "avatar_names": list(dataset.meta.avatar_names)},
            "targets": "renderer ground truth" if teacher is None else teacher.describe(),
        }
    )
    for network, status in networks.status.items():
        if status != "active":
            tqdm.write(f"loss network {network}: {status}")
    loader = endless_batches(dataset, batch_size=config.batch_size, workers=config.workers, seed=config.seed, step=step)
    augment = DriverAugmentation(colour=config.colour_jitter, warp=config.warp, warp_kind="affine")
    augment_generator = torch.Generator().manual_seed(config.seed * 104729 + step)
    model.train()
    with run.progress(total=config.steps, step=step, description="student", show=progress) as steps:
        while steps.running:
            driver, target_rgb, target_alpha, avatar, landmarks = next(loader)
            if teacher is not None:  # distillation: the teacher reenacts the clean driver
                target_rgb, target_alpha = teacher(driver, avatar)
            driver, target_rgb, target_alpha, avatar, landmarks = (
                tensor.to(device, non_blocking=True) for tensor in (driver, target_rgb, target_alpha, avatar, landmarks)
            )
            driver = augment(driver, generator=augment_generator)  # on the device; its random numbers drawn on the CPU
            with autocast:
                rgb, alpha = model(driver, avatar)
                terms = objective.generator_terms(rgb.float(), alpha.float(), target_rgb, target_alpha, landmarks)
            optimiser.zero_grad(set_to_none=True)
            terms.total.backward()
            optimiser.step()
            scheduler.step()
            floats = terms.as_floats()
            if judge is not None:
                with autocast:
                    discriminator_loss = objective.discriminator_loss(rgb.float(), target_rgb)
                judge[0].zero_grad(set_to_none=True)
                discriminator_loss.backward()
                judge[0].step()
                judge[1].step()
                floats["discriminator"] = float(discriminator_loss.detach())
            steps.advance()
            if steps.due(config.log_every):
                steps.log(floats, learning_rate=scheduler.get_last_lr()[0])
            if steps.due(config.checkpoint_every):
                discriminator_state = {}
                if judge is not None and objective.discriminator is not None:
                    discriminator_state = {
                        "discriminator": objective.discriminator.state_dict(),
                        "optimiser_discriminator": judge[0].state_dict(),
                        "scheduler_discriminator": judge[1].state_dict(),
                    }
                save_checkpoint(
                    {
                        "model": model.state_dict(),
                        **optimiser_state(optimiser, scheduler, steps.step),
                        **discriminator_state,
                        "model_config": asdict(model_config),
                        "train_config": asdict(config),
                        "commands": commands,
                        "avatar_names": list(dataset.meta.avatar_names),
                    },
                    run.checkpoint_path,
                    kind=STUDENT_KIND,
                )
                with torch.no_grad():
                    tiles = torch.stack([driver[:4], rgb[:4].detach().float(), target_rgb[:4]], dim=1).flatten(0, 1)  # 4×3 tiles
                run.save_samples(contact_sheet(tiles.cpu(), columns=3))
    return steps.summary(run_dir=run.path, batch_size=config.batch_size)
