"""Train the high-resolution enhancer (DESIGN.md §4.2) behind a frozen MegaPortraits teacher.

The teacher is a `megalive-train base` checkpoint, loaded and frozen (eval mode, no gradients); the enhancer
(models/megaportraits/enhancer.py) turns its r px output into 2r px. Data: SyntheticPairs rendered at 2r (each
sample: source s, driver d of the same clip, driver d* of another identity); the teacher reads the area-downsampled
s, d and d*, and reenacts s with both drivers in one batch. Per step, with E the enhancer and T the teacher:

    self-driven   x = E(T(s↓, d↓))    target d at 2r:
                  λ_l1 (100) · [L1 of rgb on d's foreground + L1 of alpha]
                  + λ_adv (1) · PatchGAN hinge + λ_fm (100) · feature matching (d's features as the real ones)
    cross-driven  x* = E(T(s↓, d*↓))  no target at 2r is assumed (real video has none):
                  λ_adv (1) · hinge + λ_cycle (10) · [L1 of rgb on T's foreground + L1 of alpha] between x*↓ and T(s↓, d*↓)

then one discriminator step (hinge): the drivers d on their masks are the real images; the self-driven outputs on
d's mask and the cross-driven ones on their own (detached) alpha are the fakes. ↓ is the 2×2 area mean. The
multi-scale PatchGAN (models/losses.py) per teacher preset is ``ENHANCER_DISCRIMINATORS``. AdamW (0.5, 0.999),
weight decay 1e-2, cosine learning rate 2e-4 -> 1e-6 for both networks (DESIGN.md §4.1's optimiser).

One process, on the CPU or one GPU (no torchrun). A run folder holds config.json (the resolved config: training,
teacher, model, discriminator, losses, data), checkpoint.pt (kind ENHANCER_KIND: enhancer and discriminator,
their optimisers and schedulers, the step, the resolved config, and the teacher it was trained behind: preset,
checkpoint path and weights digest), log.jsonl (with ``l1_bicubic``: the self-driven L1 of the bicubic upsample,
the figure the enhancer's ``l1`` must get under) and samples.png.

Exact resume: weights, optimisers, schedulers and step come from the checkpoint; the data order is a function of
(seed, epoch) and each step's seeds of (seed, step), so a resumed run continues bit for bit as the uninterrupted one
on the CPU with the same number of threads. A run resumed behind another teacher (another preset, or the same preset
with other weights) is refused, as is a change of any field in RUN_DEFINING_FIELDS.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from models.blocks import on_white
from models.checkpoints import ENHANCER_KIND, check_kind, load_state, save_checkpoint, state_digest
from models.data.heads import contact_sheet
from models.data.synthetic_pairs import ReenactmentSample, SyntheticPairs, SyntheticPairsConfig
from models.losses import (
    DiscriminatorConfig,
    MultiScaleDiscriminator,
    feature_matching_loss,
    foreground,
    hinge_discriminator_loss,
    hinge_generator_loss,
    masked_l1,
    split_discriminator_output,
)
from models.megaportraits.appearance import Appearance
from models.megaportraits.base import BaseModel
from models.megaportraits.enhancer import (
    SCALE,
    Enhancer,
    EnhancerConfig,
    FrozenTeacher,
    area_downsample,
    bicubic_upsample,
    describe,
    enhancer_config,
    load_frozen_teacher,
)
from models.megaportraits.motion import Motion
from models.training.common import TrainingError
from models.training.distributed import DEVICES, Processes, distributed_batches, resolve_device, seed_step
from models.training.enhancer_settings import RUN_DEFINING_FIELDS, EnhancerTrainConfig
from models.training.run_folder import RunFolder

# Multi-scale PatchGAN at the enhancer's (2r) resolution, per teacher preset (this project's widths).
ENHANCER_DISCRIMINATORS: dict[str, DiscriminatorConfig] = {
    "tiny": DiscriminatorConfig(scales=2, channels=(16, 32, 64)),
    "cpu128": DiscriminatorConfig(scales=2, channels=(32, 64, 128, 256)),
    "paper256": DiscriminatorConfig(scales=2, channels=(64, 128, 256, 512)),
    "paper512": DiscriminatorConfig(scales=3, channels=(64, 128, 256, 512)),
}


LOSS_NAMES = ("enhancer", "l1", "adversarial", "feature_matching", "cycle", "discriminator")


def check_enhancer_config(config: EnhancerTrainConfig) -> None:
    """Cheap checks, before anything is loaded or written; raises TrainingError (one line)."""
    problems = [message for bad, message in (
        (config.steps < 1, "--steps must be at least 1"),
        (config.batch_size < 1, "--batch must be at least 1"),
        (not config.learning_rate > 0, "--lr must be positive"),
        (not 0 <= config.final_learning_rate <= config.learning_rate, "the final learning rate must be in [0, --lr]"),
        (not min(config.l1_weight, config.adversarial_weight, config.feature_matching_weight, config.cycle_weight) >= 0,
         "loss weights must be 0 or more"),
        (config.identities < 2, "--identities must be at least 2 (cross drivers come from another identity)"),
        (config.workers < 0, "--workers must be 0 or more"),
        (config.log_every < 1 or config.checkpoint_every < 1, "--log-every and --checkpoint-every must be at least 1"),
        (config.device not in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
        (not Path(config.teacher).is_file(), f"--teacher {config.teacher}: no such file"),
    ) if bad]  # fmt: skip
    if problems:
        raise TrainingError(problems[0])


class EnhancerPlan(NamedTuple):
    """What a run will do, every refusal made: the frozen teacher, the run's checkpoint (None: a new run) and the
    resolved config (config.json, and --dry-run's output)."""

    teacher: FrozenTeacher
    model_config: EnhancerConfig
    discriminator_config: DiscriminatorConfig
    dataset: SyntheticPairs
    checkpoint: dict[str, Any] | None
    resolved: dict[str, Any]

    @property
    def start_step(self) -> int:
        return 0 if self.checkpoint is None else int(self.checkpoint["step"])


def plan_enhancer_run(config: EnhancerTrainConfig) -> EnhancerPlan:
    """Load and check the teacher and the run's checkpoint; nothing is written. TrainingError (one line) for a teacher
    that is not a base model (or not of ``config.preset``), or a run folder that belongs to another run."""
    check_enhancer_config(config)
    teacher = load_frozen_teacher(Path(config.teacher), expect_preset=config.preset)
    run = RunFolder(config.run_dir)
    checkpoint = run.saved_checkpoint()
    if checkpoint is not None:
        where = f"resume: {run.checkpoint_path}"
        check_kind(checkpoint, ENHANCER_KIND, where=where)
        saved_teacher = checkpoint.get("teacher") or {}
        if saved_teacher.get("preset") != teacher.preset:
            raise TrainingError(
                f"{where} holds an enhancer for teacher preset {saved_teacher.get('preset')!r}, but --teacher {teacher.path} "
                f"is {teacher.preset!r}; use a new --run folder"
            )
        if saved_teacher.get("digest") != teacher.digest:
            raise TrainingError(
                f"{where} was trained behind another teacher (weights {saved_teacher.get('digest')}, from "
                f"{saved_teacher.get('path')}), not --teacher {teacher.path} ({teacher.digest}); use a new --run folder"
            )
        saved = checkpoint.get("train_config", {})
        changed = [name for name in RUN_DEFINING_FIELDS if saved.get(name) != getattr(config, name)]
        if changed:
            raise TrainingError(
                f"{where} belongs to a run with another {changed[0]} ({saved.get(changed[0])!r}, not "
                f"{getattr(config, changed[0])!r}); use a new --run folder"
            )
    model_config = enhancer_config(teacher.preset)
    discriminator_config = ENHANCER_DISCRIMINATORS[teacher.preset]
    dataset = SyntheticPairs(
        config=SyntheticPairsConfig(resolution=model_config.output_resolution, identities=config.identities, seed=config.seed)
    )
    resolved = {
        "train": asdict(config),
        "teacher": {**teacher.describe(), "frozen": True},
        "model": describe(model_config),
        "discriminator": asdict(discriminator_config),
        "losses": {
            "self_driven": {
                "l1 (rgb on the target's foreground + alpha)": config.l1_weight,
                "adversarial (hinge)": config.adversarial_weight,
                "feature_matching": config.feature_matching_weight,
            },
            "cross_driven": {
                "adversarial (hinge)": config.adversarial_weight,
                "cycle (area-downsampled output vs the teacher's output: rgb on its foreground + alpha)": config.cycle_weight,
            },
            "optimiser": "AdamW (0.5, 0.999), cosine schedule, for the enhancer and the discriminator",
        },
        "data": {**dataset.describe(), "teacher_input": f"source and drivers area-downsampled ×1/{SCALE}"},
        "device": str(resolve_device(config.device)),
        "resume_step": 0 if checkpoint is None else int(checkpoint["step"]),
    }
    return EnhancerPlan(
        teacher=teacher,
        model_config=model_config,
        discriminator_config=discriminator_config,
        dataset=dataset,
        checkpoint=checkpoint,
        resolved=resolved,
    )


# -- the step -----------------------------------------------------------------------------------------


class TeacherOutput(NamedTuple):
    rgb: Tensor  # 2B×3×r×r in [0, 1]: s reenacted by d, then by d*
    alpha: Tensor  # 2B×1×r×r


def teacher_reenactments(teacher: BaseModel, source: Tensor, driver: Tensor, cross_driver: Tensor) -> TeacherOutput:
    """The frozen teacher's self- and cross-driven reenactments of ``source`` in one batch (the source encoded once).
    source, driver, cross_driver: B×3×r×r in [0, 1]."""
    batch = source.shape[0]
    with torch.no_grad():
        appearance = teacher.encode_appearance(source)  # v_s B×C×D×S×S, e_s B×E×k×k
        motions = teacher.encode_motion(torch.cat([source, driver, cross_driver]))  # 3B rows: s, d, d*
        source_motion = Motion(*(torch.cat([part[:batch], part[:batch]]) for part in motions))  # B rows, twice -> 2B
        driver_motion = Motion(*(part[batch:] for part in motions))  # 2B rows: d, d*
        twice = Appearance(*(torch.cat([part, part]) for part in appearance))  # B×… -> 2B×…
        output = teacher.render(twice, source_motion=source_motion, driver_motion=driver_motion)
    return TeacherOutput(rgb=output.rgb.clamp(0, 1), alpha=output.alpha.clamp(0, 1))


def _adamw_with_cosine(
    module: torch.nn.Module, config: EnhancerTrainConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.CosineAnnealingLR]:
    optimiser = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, betas=(0.5, 0.999), weight_decay=config.weight_decay)
    return optimiser, torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps, eta_min=config.final_learning_rate)


def _nearest_up(image: Tensor) -> Tensor:
    return F.interpolate(image, scale_factor=float(SCALE), mode="nearest")  # B×C×r×r -> B×C×2r×2r, pixels kept visible


def _sample_sheet(batch: ReenactmentSample, low: TeacherOutput, rgb: Tensor, alpha: Tensor, rows: int = 4) -> Tensor:
    """Per sample one row at 2r (on white): source, driver, teacher (its pixels, nearest ×2), bicubic, enhanced, target |
    cross driver, teacher, enhanced."""
    count, half = min(rows, batch.source.shape[0]), batch.source.shape[0]
    rgb, alpha = rgb.detach().float().clamp(0, 1), alpha.detach().float().clamp(0, 1)
    teacher = _nearest_up(on_white(low.rgb, low.alpha))  # 2B×3×2r×2r
    bicubic = on_white(bicubic_upsample(low.rgb).clamp(0, 1), bicubic_upsample(low.alpha).clamp(0, 1))
    enhanced = on_white(rgb, alpha)
    columns = [
        batch.source,
        batch.driver,
        teacher[:half],
        bicubic[:half],
        enhanced[:half],
        on_white(batch.driver, batch.driver_alpha),
        batch.cross_driver,
        teacher[half:],
        enhanced[half:],
    ]
    tiles = torch.stack([column[:count].detach().float().cpu() for column in columns], dim=1).flatten(0, 1)  # count×9 tiles
    return contact_sheet(tiles, columns=len(columns))


@dataclass(frozen=True)
class EnhancerTrainSummary:
    run_dir: Path
    steps: int
    final_losses: dict[str, float]
    seconds_per_step: float  # of this invocation's steps (NaN when it took none)
    weights_digest: str  # state_digest of the enhancer and the discriminator


def train_enhancer(config: EnhancerTrainConfig, *, progress: bool = True, stop_at: int | None = None) -> EnhancerTrainSummary:
    """Train (or resume) the run in ``config.run_dir``. ``stop_at`` ends the run early at a step, as an interruption
    would, while the schedule still spans ``config.steps``."""
    plan = plan_enhancer_run(config)
    device = resolve_device(config.device)
    run, checkpoint, teacher = RunFolder(config.run_dir), plan.checkpoint, plan.teacher
    teacher_model = teacher.model.to(device)
    torch.manual_seed(config.seed)
    enhancer = Enhancer(config=plan.model_config).to(device)
    discriminator = MultiScaleDiscriminator(config=plan.discriminator_config).to(device)
    optimiser_e, scheduler_e = _adamw_with_cosine(enhancer, config)
    optimiser_d, scheduler_d = _adamw_with_cosine(discriminator, config)
    step = plan.start_step
    if checkpoint is not None:
        load_state(enhancer, checkpoint, "enhancer", path=run.checkpoint_path)
        load_state(discriminator, checkpoint, "discriminator", path=run.checkpoint_path)
        optimiser_e.load_state_dict(checkpoint["optimiser_enhancer"])
        optimiser_d.load_state_dict(checkpoint["optimiser_discriminator"])
        scheduler_e.load_state_dict(checkpoint["scheduler_enhancer"])
        scheduler_d.load_state_dict(checkpoint["scheduler_discriminator"])
    run.write_config(plan.resolved)
    processes = Processes(rank=0, world_size=1, device=device)
    batches = distributed_batches(
        plan.dataset, batch_size=config.batch_size, processes=processes, seed=config.seed, workers=config.workers, start_step=step
    )
    enhancer.train()
    discriminator.train()
    stepping = run.progress(total=config.steps, step=step, description=f"enhancer {teacher.preset}", show=progress, stop_at=stop_at)
    began, first_step = time.perf_counter(), step
    with stepping as steps:
        steps.event(
            {"event": "start", "step": step, "device": str(device), "resumed": checkpoint is not None, "teacher": teacher.describe()}
        )
        while steps.running:
            batch = ReenactmentSample(*(tensor.to(device, non_blocking=True) for tensor in next(batches)))
            seed_step(config.seed, 0, steps.step)
            half = batch.source.shape[0]
            low = teacher_reenactments(
                teacher_model, area_downsample(batch.source), area_downsample(batch.driver), area_downsample(batch.cross_driver)
            )  # 2B at r: self, then cross

            # Enhancer step (the discriminator frozen).
            discriminator.requires_grad_(False)
            output = enhancer(low.rgb, low.alpha)  # 2B at 2r
            rgb, alpha = output.rgb, output.alpha
            l1 = masked_l1(rgb[:half], batch.driver, batch.driver_alpha) + (alpha[:half] - batch.driver_alpha).abs().mean()
            real = foreground(batch.driver, batch.driver_alpha)  # B×3×2r×2r
            fake_masks = torch.cat([batch.driver_alpha, alpha[half:].detach().clamp(0, 1)])  # self: d's mask; cross: its own
            judged = discriminator(torch.cat([real, foreground(rgb, fake_masks)]))  # B real, then 2B fakes
            _, fake_logits, real_features, fake_features = split_discriminator_output(judged, half)
            adversarial = hinge_generator_loss(fake_logits)
            matching = feature_matching_loss(real_features, [[feature[:half] for feature in scale] for scale in fake_features])
            cycle = (
                masked_l1(area_downsample(rgb[half:]), low.rgb[half:], low.alpha[half:])
                + (area_downsample(alpha[half:]) - low.alpha[half:]).abs().mean()
            )  # 2r -> r
            total = (
                config.l1_weight * l1
                + config.adversarial_weight * adversarial
                + config.feature_matching_weight * matching
                + config.cycle_weight * cycle
            )
            optimiser_e.zero_grad(set_to_none=True)
            total.backward()
            optimiser_e.step()
            discriminator.requires_grad_(True)

            # Discriminator step.
            judged = discriminator(torch.cat([real, foreground(rgb.detach(), fake_masks)]))
            real_logits, fake_logits, _, _ = split_discriminator_output(judged, half)
            discriminator_loss = hinge_discriminator_loss(real_logits, fake_logits)
            optimiser_d.zero_grad(set_to_none=True)
            discriminator_loss.backward()
            optimiser_d.step()
            scheduler_e.step()
            scheduler_d.step()
            steps.advance()

            if steps.due(config.log_every):
                with torch.no_grad():  # the figure to beat: the bicubic upsample's L1 on the same self-driven pairs
                    bicubic_l1 = (
                        masked_l1(bicubic_upsample(low.rgb[:half]), batch.driver, batch.driver_alpha)
                        + (bicubic_upsample(low.alpha[:half]) - batch.driver_alpha).abs().mean()
                    )
                values = [total, l1, adversarial, matching, cycle, discriminator_loss]
                losses = {name: float(value.detach()) for name, value in zip(LOSS_NAMES, values, strict=True)}
                steps.log(
                    losses,
                    learning_rate=scheduler_e.get_last_lr()[0],
                    extra={"l1_bicubic": float(bicubic_l1), "samples_per_second": steps.samples_per_second(batch_size=config.batch_size)},
                )
            if steps.due(config.checkpoint_every):
                save_checkpoint({
                    "enhancer": enhancer.state_dict(), "discriminator": discriminator.state_dict(),
                    "optimiser_enhancer": optimiser_e.state_dict(), "optimiser_discriminator": optimiser_d.state_dict(),
                    "scheduler_enhancer": scheduler_e.state_dict(), "scheduler_discriminator": scheduler_d.state_dict(),
                    "step": steps.step, "model_config": asdict(plan.model_config),
                    "discriminator_config": asdict(plan.discriminator_config), "train_config": asdict(config),
                    "teacher": teacher.describe(), "resolved_config": plan.resolved,
                    "rng": "derived per step: torch, numpy and python seeded from (seed, step)",
                }, run.checkpoint_path, kind=ENHANCER_KIND)  # fmt: skip
                run.save_samples(_sample_sheet(batch, low, rgb, alpha))
        elapsed, taken = time.perf_counter() - began, steps.step - first_step
        digest = state_digest(enhancer.state_dict(), discriminator.state_dict())
        steps.event({"event": "end", "step": steps.step, "weights_digest": digest, "seconds_per_step": elapsed / taken if taken else None})
    return EnhancerTrainSummary(
        run_dir=run.path,
        steps=steps.step,
        final_losses=steps.last_losses,
        seconds_per_step=elapsed / taken if taken else float("nan"),
        weights_digest=digest,
    )
