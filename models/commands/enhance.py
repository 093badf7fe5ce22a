"""`megalive-train` commands of the high-resolution enhancer (DESIGN §4.2): enhancer (training behind a frozen teacher)
and enhancer-eval (the benchmark at the high resolution against the teacher upsampled bicubically)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from models.commands.common import refuse
from models.training.enhancer_settings import EnhancerEvalConfig, EnhancerTrainConfig


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_train(commands)
    _add_eval(commands)


def _add_train(commands: argparse._SubParsersAction) -> None:
    defaults = EnhancerTrainConfig(run_dir="", teacher="")
    train = commands.add_parser(
        "enhancer",
        help="train the high-resolution enhancer (2× the teacher's side) behind a frozen base model",
        description="Train the MegaPortraits enhancer behind a frozen `megalive-train base` checkpoint: SyntheticHeads pairs "
        "rendered at twice the teacher's resolution, the teacher fed their area-downsampled source and drivers. Self-driven: "
        "L1 (rgb on the foreground + alpha) + PatchGAN hinge + feature matching against the high-resolution driver; "
        "cross-driven: hinge + a low-resolution cycle L1 against the teacher's output. AdamW (0.5, 0.999), cosine learning "
        "rate. Resumes from RUN/checkpoint.pt when it exists (behind the same teacher only). One process (CPU or one GPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = train.add_argument
    add("--teacher", type=Path, required=True, metavar="PATH", help="`megalive-train base` RUN/checkpoint.pt (frozen)")
    add("--run", dest="run_dir", type=Path, required=True, metavar="DIR", help="run folder (config, checkpoint, log, samples)")
    add("--preset", default=None, metavar="NAME", help="refuse a teacher of another preset (tiny, cpu128, paper256, paper512)")
    add("--steps", type=int, default=defaults.steps, metavar="N", help="optimiser steps in total, ≥ 1 (resume counts on)")
    add("--batch", type=int, default=defaults.batch_size, metavar="N", help="samples per step, ≥ 1 (each: self- and cross-driven)")
    add("--lr", type=float, default=defaults.learning_rate, metavar="LR", help="initial learning rate, > 0 (cosine to 1e-6)")
    add("--l1-weight", type=float, default=defaults.l1_weight, metavar="W", help="self-driven L1 λ, ≥ 0 (paper 100)")
    add("--adversarial-weight", type=float, default=defaults.adversarial_weight, metavar="W", help="PatchGAN hinge λ, ≥ 0")
    add("--matching-weight", type=float, default=defaults.feature_matching_weight, metavar="W", help="feature matching λ, ≥ 0 (paper 100)")
    add(
        "--cycle-weight", type=float, default=defaults.cycle_weight, metavar="W", help="cross-driven low-resolution cycle λ, ≥ 0 (paper 10)"
    )
    add("--identities", type=int, default=defaults.identities, metavar="N", help="synthetic identity pool, ≥ 2")
    add("--seed", type=int, default=defaults.seed, metavar="N", help="seed of weights, pairs and steps")
    add("--workers", type=int, default=defaults.workers, metavar="N", help="data loader processes rendering the pairs, ≥ 0")
    add("--log-every", type=int, default=defaults.log_every, metavar="N", help="steps between log.jsonl lines, ≥ 1")
    add("--checkpoint-every", type=int, default=defaults.checkpoint_every, metavar="N", help="steps between checkpoints, ≥ 1")
    add("--device", default=defaults.device, choices=("auto", "cpu", "cuda"), help="where to train (auto: CUDA if present)")
    add("--dry-run", action="store_true", help="check the teacher and the run folder, print the resolved config and exit")
    train.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from models.export import current_command
    from models.training.common import TrainingError
    from models.training.train_enhancer import plan_enhancer_run, train_enhancer

    try:
        config = EnhancerTrainConfig(
            run_dir=str(args.run_dir),
            teacher=str(args.teacher),
            preset=args.preset,
            steps=args.steps,
            batch_size=args.batch,
            learning_rate=args.lr,
            l1_weight=args.l1_weight,
            adversarial_weight=args.adversarial_weight,
            feature_matching_weight=args.matching_weight,
            cycle_weight=args.cycle_weight,
            identities=args.identities,
            seed=args.seed,
            workers=args.workers,
            log_every=args.log_every,
            checkpoint_every=args.checkpoint_every,
            device=args.device,
            command=current_command(),
        )
        if args.dry_run:
            print(json.dumps(plan_enhancer_run(config).resolved, indent=2))
            return 0
        summary = train_enhancer(config)
    except (TrainingError, ValueError, OSError) as error:
        return refuse("enhancer", error)
    print(
        f"trained the enhancer to step {summary.steps} in {summary.run_dir}; last losses {summary.final_losses}; "
        f"{summary.seconds_per_step:.2f} s/step"
    )
    return 0


def _add_eval(commands: argparse._SubParsersAction) -> None:
    defaults = EnhancerEvalConfig(enhancer="", out="")
    evaluate = commands.add_parser(
        "enhancer-eval",
        help="benchmark an enhancer at the high resolution against its teacher upsampled bicubically",
        description="On held-out SyntheticHeads identities and clips (cross- and self-driven), the teacher's output brought to "
        "twice its side bicubically and by the enhancer, both against the renderer's ground truth at that side: foreground "
        "PSNR/SSIM, eye and mouth PSNR (boxes from the target's landmarks), perceptual distance (EfficientNet-Lite0; absent, "
        "and said so, without its weight files). Writes OUT/enhancer-eval.json, OUT/enhancer-eval.md and "
        "OUT/enhancer-contact-sheet.png (teacher, bicubic, enhanced, ground truth).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = evaluate.add_argument
    add("--enhancer", type=Path, required=True, metavar="PATH", help="`megalive-train enhancer` RUN/checkpoint.pt")
    add("--out", type=Path, required=True, metavar="DIR", help="folder for the report, table and contact sheet")
    add("--teacher", type=Path, default=None, metavar="PATH", help="the teacher checkpoint (default: the one it was trained behind)")
    add("--preset", default=None, metavar="NAME", help="refuse an enhancer for another teacher preset")
    add("--sources", type=int, default=defaults.sources, metavar="N", help="held-out source identities, ≥ 1")
    add("--clips", type=int, default=defaults.clips, metavar="N", help="held-out clips (one new driver identity each), ≥ 1")
    add("--frames", type=int, default=defaults.frames_per_clip, metavar="N", help="frames per clip, ≥ 1")
    add("--seed", type=int, default=defaults.seed, metavar="N", help="held-out seed (training streams never use it)")
    add("--batch", type=int, default=defaults.batch_size, metavar="N", help="pairs per forward pass, ≥ 1")
    add("--metric-size", type=int, default=defaults.metric_size, metavar="PX", help="side for EfficientNet-Lite0 (0: as rendered)")
    add("--dry-run", action="store_true", help="check the enhancer and its teacher, print what would run and exit")
    evaluate.set_defaults(run=_eval)


def _eval(args: argparse.Namespace) -> int:
    from models.enhancer_evaluation import REPORT_NAME, SHEET_NAME, TABLE_NAME, evaluate_enhancer, load_models
    from models.training.common import TrainingError

    config = EnhancerEvalConfig(
        enhancer=str(args.enhancer),
        out=str(args.out),
        teacher=None if args.teacher is None else str(args.teacher),
        preset=args.preset,
        sources=args.sources,
        clips=args.clips,
        frames_per_clip=args.frames,
        seed=args.seed,
        batch_size=args.batch,
        metric_size=args.metric_size,
    )
    try:
        models = load_models(config)
        if args.dry_run:
            described = {
                "config": asdict(config),
                "teacher": {"path": models.teacher_path, "preset": models.teacher_preset, "as_trained": models.as_trained},
                "resolution": [models.enhancer.config.input_resolution, models.enhancer.config.output_resolution],
                "pairs": config.clips * config.frames_per_clip,
                "writes": [str(args.out / name) for name in (REPORT_NAME, TABLE_NAME, SHEET_NAME)],
            }
            print(json.dumps(described, indent=2))
            return 0
        report = evaluate_enhancer(config, models=models)
    except (TrainingError, ValueError, OSError) as error:
        return refuse("enhancer-eval", error)
    print(report.table(), end="")
    print(f"wrote {args.out / REPORT_NAME}, {args.out / TABLE_NAME} and {args.out / SHEET_NAME}")
    return 0
