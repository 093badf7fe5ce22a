"""`megalive-train enroll`: few-shot refinement of an enrolled avatar (models/training/refine_identity.py), the job the
server starts in a separate process after a one-shot enrollment (contract/refinement_job.py: its files and lines).

Its target: the avatar's K frames, self-driven (``--target frames``, what the server runs), or a teacher's
reenactments of them (``--target teacher --teacher BASE.pt [--enhancer ENH.pt]``: models/training/teacher_reenactments.py),
optionally with the frames as well (``--with-frames``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from models.commands.common import exit_on_sigterm, refuse
from models.training.refine_identity import DRIVER_KINDS, ReenactmentConfig, RefineConfig

TARGETS = ("frames", "teacher")


def add_commands(commands: argparse._SubParsersAction) -> None:
    defaults, reenactment_defaults = RefineConfig(), ReenactmentConfig()
    enroll = commands.add_parser(
        "enroll",
        help="refine an enrolled avatar: fit its identity tensor to its frames (the server runs this after a one-shot enroll)",
        description="Few-shot refinement: the identity tensor of JOB.in.npz (the one-shot avatar) is fitted to its K frames by "
        "self-reenactment through the model's frozen student (its weights beside the model, MODEL.weights.npz), and written to "
        "--out. Only that tensor changes. With --target teacher it is fitted instead to a frozen teacher's reenactments of the "
        "frames (each frame the teacher's source, driven by N driver frames; the student, driven by the same frames, must draw "
        "them), optionally enhanced to twice the teacher's side, resized to the model's. "
        "Progress: a bar, or with --progress-lines one JSON line per step on stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    enroll.add_argument("--model", type=Path, required=True, metavar="PATH", help="the contract-v2 model (student.onnx)")
    enroll.add_argument(
        "--job", type=Path, metavar="PATH", help="the job's input (JOB.in.npz: frames, landmarks, identity); required but with --dry-run"
    )
    enroll.add_argument(
        "--out", type=Path, metavar="PATH", help="where the refined identity goes (JOB.out.npz); required but with --dry-run"
    )
    enroll.add_argument("--steps", type=int, default=defaults.steps, metavar="N", help="optimiser steps")
    enroll.add_argument("--lr", type=float, default=defaults.learning_rate, metavar="LR", help="Adam's learning rate")
    enroll.add_argument("--frames-per-step", type=int, default=defaults.frames_per_step, metavar="N", help="frames driven per step")
    enroll.add_argument("--anchor", type=float, default=defaults.anchor_weight, metavar="W", help="pull towards the one-shot tensor")
    enroll.add_argument("--target", choices=TARGETS, default="frames", help="fit the K frames (self-driven) or a teacher's reenactments")
    enroll.add_argument("--teacher", type=Path, metavar="PATH", help="--target teacher: the `megalive-train base` checkpoint")
    enroll.add_argument(
        "--enhancer", type=Path, metavar="PATH", help="--target teacher: a `megalive-train enhancer` checkpoint of that teacher preset"
    )
    enroll.add_argument(
        "--reenactments",
        type=int,
        default=reenactment_defaults.count,
        metavar="N",
        help="--target teacher: driver frames (each of the K frames is reenacted by each: K·N pictures)",
    )
    enroll.add_argument(
        "--drivers",
        choices=DRIVER_KINDS,
        default=reenactment_defaults.drivers,
        help="--target teacher: SyntheticHeads clip frames of other identities, or the person's own frames (at most K)",
    )
    enroll.add_argument("--with-frames", action="store_true", help="--target teacher: fit the K frames self-driven as well")
    enroll.add_argument("--seed", type=int, default=defaults.seed, metavar="N", help="the frames picked per step and the drivers drawn")
    enroll.add_argument("--threads", type=int, default=0, metavar="N", help="torch threads (0: torch's default)")
    enroll.add_argument("--nice", type=int, default=0, metavar="N", help="lower this process's priority by N (the server's jobs: 10)")
    enroll.add_argument("--progress-lines", action="store_true", help="one JSON line per step on stdout (what the server reads)")
    enroll.add_argument("--allow-missing-nets", action="store_true", help="without EfficientNet-Lite0's weights, fit by L1 alone")
    enroll.add_argument(
        "--dry-run",
        action="store_true",
        help="check the model, the target and the job (when given), print the config and exit (what `megalive serve` runs at start)",
    )
    enroll.set_defaults(run=_enroll)


def _enroll(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from contract.model_card import ModelCardError, read_model_card
    from contract.refinement_job import RefinementJobError, RefinementOutput, done_line, progress_line, read_input, write_output
    from models.checkpoints import student_from_weights
    from models.nets.perceptual import PerceptualFeatures
    from models.nets.weights import PERCEPTUAL_NETWORK, network_problem
    from models.training.common import TrainingError
    from models.training.refine_identity import refine_identity
    from models.training.teacher_reenactments import describe_reenactments, load_teacher_target, teacher_reenactments

    signal.signal(signal.SIGTERM, exit_on_sigterm)  # a cancelled job ends at once, writing nothing
    if args.nice > 0 and hasattr(os, "nice"):
        os.nice(args.nice)
    began = time.perf_counter()
    try:
        teacher_only = [
            name
            for name, given in (("--teacher", args.teacher), ("--enhancer", args.enhancer), ("--with-frames", args.with_frames))
            if given
        ]
        if args.target == "frames" and teacher_only:
            raise TrainingError(f"{', '.join(teacher_only)}: only with --target teacher")
        if args.target == "teacher" and args.teacher is None:
            raise TrainingError("--target teacher needs --teacher (a `megalive-train base` checkpoint)")
        if not args.dry_run and (args.job is None or args.out is None):
            raise TrainingError("--job and --out are required (only --dry-run goes without them)")
        config = RefineConfig(
            steps=args.steps,
            learning_rate=args.lr,
            frames_per_step=args.frames_per_step,
            anchor_weight=args.anchor,
            seed=args.seed,
            frames_weight=1.0 if args.target == "frames" or args.with_frames else 0.0,
        )
        reenactment_config = ReenactmentConfig(count=args.reenactments, drivers=args.drivers, seed=args.seed)
        card = read_model_card(args.model)
        files = card.enrollment
        if files is None or files.weights_path is None or files.student_config is None:
            raise TrainingError(f"{args.model} cannot refine avatars: it has no student weights beside it (a contract-v2 export)")
        job = None if args.job is None else read_input(args.job)  # None: a --dry-run of the model and target alone
        if job is not None and (job.frames.shape[1:3] != card.resolution or job.identity.shape != files.identity_shape):
            raise TrainingError(
                f"{args.job}: frames {job.frames.shape[1:3]} and identity {job.identity.shape} do not fit {card.name} "
                f"({card.resolution}, {files.identity_shape})"
            )
        problem = network_problem(PERCEPTUAL_NETWORK)
        if problem is not None and not args.allow_missing_nets:
            raise TrainingError(f"the perceptual network cannot be loaded: {problem} (or --allow-missing-nets)")
        objective = {
            "l1": "plain" if job is not None and job.landmarks is None else "eyes and mouth weighted",
            "perceptual": problem or "EfficientNet-Lite0",
        }
        teacher = None if args.target == "frames" else load_teacher_target(teacher=args.teacher, enhancer=args.enhancer)
        target: dict[str, object] = {"kind": "frames"}
        if teacher is not None:
            target = {"kind": "teacher", **teacher.describe(), **describe_reenactments(reenactment_config), "with_frames": args.with_frames}
        if args.dry_run:
            frame_count = None if job is None else len(job.frames)
            print(json.dumps({"refine": asdict(config), "frames": frame_count, "objective": objective, "target": target}, indent=2))
            return 0
        if args.threads:
            torch.set_num_threads(args.threads)
        student = student_from_weights(files.weights_path, files.student_config)
        perceptual = PerceptualFeatures() if problem is None else None
    except (TrainingError, ModelCardError, RefinementJobError, ValueError) as error:
        return refuse("enroll", error)
    assert job is not None and args.out is not None  # checked above: only a dry run goes without them
    frames = torch.from_numpy(job.frames).permute(0, 3, 1, 2).float() / 255  # K×H×W×3 uint8 -> K×3×H×W in [0, 1]
    landmarks = None if job.landmarks is None else torch.from_numpy(job.landmarks).float()
    reenactments = None
    if teacher is not None:
        if not args.progress_lines:
            print(f"reenacting {len(frames)} frame(s) with the teacher ({teacher.path}) …", file=sys.stderr)
        reenacting = time.perf_counter()
        reenactments = teacher_reenactments(teacher, frames=frames, landmarks=landmarks, config=reenactment_config)
        target = {
            **target,
            **describe_reenactments(reenactment_config, reenactments),
            "seconds": round(time.perf_counter() - reenacting, 2),
        }
    with tqdm(total=config.steps, desc="refining", unit="step", disable=args.progress_lines) as bar:

        def on_step(step: int, loss: float) -> bool:
            if args.progress_lines:
                print(progress_line(step=step, steps=config.steps, loss=loss), flush=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            return True

        result = refine_identity(
            student,
            identity=torch.from_numpy(job.identity),
            frames=frames,
            landmarks=landmarks,
            config=config,
            perceptual=perceptual,
            on_step=on_step,
            reenactments=reenactments,
        )
    summary = {
        "steps": result.steps,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "seconds": round(time.perf_counter() - began, 2),
        "frames": len(job.frames),
        "refine": asdict(config),
        "objective": objective,
        "target": target,
    }
    write_output(RefinementOutput(identity=result.identity.numpy().astype(np.float32), summary=summary), args.out)
    if args.progress_lines:
        print(done_line(summary), flush=True)
    else:
        print(
            f"refined in {summary['seconds']} s: loss {result.first_loss:.4f} -> {result.last_loss:.4f}; wrote {args.out}", file=sys.stderr
        )
    return 0
