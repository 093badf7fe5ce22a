"""`megalive-train`: the model factory. Each command writes files (checkpoints, ONNX + sidecar)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    try:
        return version("megalive")
    except PackageNotFoundError:
        return "0+unknown"


def _refuse(command: str, message: object) -> int:
    """Bad input of `megalive-train COMMAND`: one line on stderr, exit status 2."""
    print(f"megalive-train {command}: {message}", file=sys.stderr)
    return 2


def _first_problem(checks: tuple[tuple[bool, str], ...]) -> str | None:
    """The message of the first check that failed (True = bad), or None."""
    return next((message for bad, message in checks if bad), None)


def _add_contract_model(commands: argparse._SubParsersAction) -> None:
    contract = commands.add_parser(
        "contract-model",
        help="export a random-weight model that follows the avatar contract (for runtime tests and benchmarks)",
        description="Export ContractModel, a small random-weight network with the avatar-model inputs and outputs, "
        "as ONNX + sidecar. Its pictures mean nothing; it measures the runtime (transport, batching, latency).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    contract.add_argument("--out", type=Path, required=True, metavar="PATH", help="output .onnx (sidecar .json beside it)")
    contract.add_argument("--resolution", type=int, default=256, metavar="PX", help="square resolution [16-1024, multiple of 4]")
    contract.add_argument("--avatars", type=int, default=4, metavar="N", help="number of avatars [1-1024]")
    contract.add_argument("--width", type=int, default=32, metavar="C", help="channels after the first downsampling")
    contract.add_argument("--seed", type=int, default=0, metavar="N", help="weight seed")
    contract.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    contract.set_defaults(run=_contract_model)


def _contract_model(args: argparse.Namespace) -> int:
    from models.contract_model import ContractModel, ContractModelConfig

    problem = _first_problem(
        (
            (not 16 <= args.resolution <= 1024 or args.resolution % 4 != 0, "--resolution must be a multiple of 4 in [16, 1024]"),
            (not 1 <= args.avatars <= 1024, "--avatars must be in [1, 1024]"),
        )
    )
    if problem is not None:
        return _refuse("contract-model", problem)
    config = ContractModelConfig(resolution=args.resolution, num_avatars=args.avatars, width=args.width)
    if args.dry_run:
        print(json.dumps({"config": asdict(config), "seed": args.seed, "out": str(args.out)}, indent=2))
        return 0
    from models.export import current_command, export_avatar_model

    report = export_avatar_model(
        ContractModel(config=config, seed=args.seed),
        out_path=args.out,
        resolution=(args.resolution, args.resolution),
        avatar_names=[f"contract-{i}" for i in range(args.avatars)],
        command=current_command(),
        config={"model": "ContractModel", **asdict(config), "seed": args.seed},
    )
    print(
        f"wrote {report.model_path} ({report.onnx_bytes / 1e6:.1f} MB) and {report.sidecar_path}; "
        f"ONNX Runtime vs PyTorch max abs error {report.max_abs_error:.2e}"
    )
    return 0


def _add_synth(commands: argparse._SubParsersAction) -> None:
    synth = commands.add_parser(
        "synth",
        help="render a paired SyntheticHeads dataset (driver identity + avatar doing the same motion)",
        description="Render driver/avatar pairs with SyntheticHeads: frames with alpha masks, 68 landmarks and the exact "
        "parameters, plus contact_sheet.png (avatars × expressions). Written under a temporary name, renamed when complete; "
        "a re-run removes the partial folder a killed run left.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synth.add_argument("out", type=Path, metavar="OUT", help="new dataset folder (must not exist)")
    synth.add_argument("--resolution", type=int, default=256, metavar="PX", help="square resolution [32-1024]")
    synth.add_argument("--avatars", type=int, default=8, metavar="N", help="avatar identities [1-64]")
    synth.add_argument("--drivers", type=int, default=200, metavar="N", help="driver identities (never avatars) [1-100000]")
    synth.add_argument("--pairs", type=int, default=8000, metavar="N", help="motions, each rendered for one driver and one avatar")
    synth.add_argument("--seed", type=int, default=0, metavar="N", help="seed of identities, motions and pairing")
    synth.add_argument("--batch", type=int, default=16, metavar="N", help="frames rendered per batch")
    synth.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    synth.set_defaults(run=_synth)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # the shell's status for a signalled process


def _synth(args: argparse.Namespace) -> int:
    import signal
    import threading

    from models.data.paired import DatasetError, SynthConfig, remove_stale_partials, write_paired_dataset
    from models.export import current_command

    problem = _first_problem(
        (
            (not 32 <= args.resolution <= 1024, "--resolution must be in [32, 1024]"),
            (not 1 <= args.avatars <= 64, "--avatars must be in [1, 64]"),
            (not 1 <= args.drivers <= 100_000, "--drivers must be in [1, 100000]"),
            (args.pairs < 1, "--pairs must be at least 1"),
            (args.batch < 1, "--batch must be at least 1"),
        )
    )
    if problem is not None:
        return _refuse("synth", problem)
    config = SynthConfig(
        resolution=args.resolution,
        num_avatars=args.avatars,
        num_driver_identities=args.drivers,
        num_motions=args.pairs,
        seed=args.seed,
        batch_size=args.batch,
    )
    if args.dry_run:
        print(json.dumps({"config": asdict(config), "out": str(args.out)}, indent=2))
        return 0
    # `kill` and schedulers' time limits send SIGTERM, which would end the process without unwinding: as an exception
    # it removes the partial folder like Ctrl-C does. SIGKILL cannot be caught; the next run removes what it leaves.
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        if not args.out.exists():
            for folder in remove_stale_partials(args.out):
                print(f"removed {folder}, the partial folder of an interrupted synth of {args.out}")
        out = write_paired_dataset(args.out, config, command=current_command())
    except DatasetError as error:
        return _refuse("synth", error)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
    print(f"wrote {config.num_motions} pairs at {config.resolution}×{config.resolution} to {out} (look at {out / 'contact_sheet.png'})")
    return 0


def _add_student(commands: argparse._SubParsersAction) -> None:
    student = commands.add_parser(
        "student",
        help="train the real-time student in cross-driving mode",
        description="Train the MegaPortraits student on a paired dataset (megalive-train synth). Resumes from RUN/checkpoint.pt "
        "when it exists. Losses: L1 + SSIM + mask (+ perceptual only with local VGG19 weights, not supported yet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    student.add_argument("--data", type=Path, required=True, metavar="DIR", help="paired dataset folder")
    student.add_argument(
        "--run", dest="run_dir", type=Path, required=True, metavar="DIR", help="run folder (config, checkpoint, log, samples)"
    )
    student.add_argument("--preset", default="cpu256", metavar="NAME", help="student preset (tiny, cpu256)")
    student.add_argument(
        "--target", default="renderer", metavar="SRC", help="target source: renderer (ground truth) | teacher (distillation from --teacher)"
    )
    student.add_argument(
        "--teacher", default=None, metavar="PATH", help="`megalive-train base` RUN/checkpoint.pt whose outputs are the targets"
    )
    student.add_argument("--steps", type=int, default=3000, metavar="N", help="optimiser steps in total (resume counts on)")
    student.add_argument("--batch", type=int, default=8, metavar="N", help="pairs per step")
    student.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="initial learning rate (cosine to 1e-5)")
    student.add_argument("--jitter", type=float, default=0.3, metavar="X", help="driver colour jitter strength [0-1]")
    student.add_argument("--warp", type=float, default=0.04, metavar="X", help="driver affine warp strength [0-0.2]")
    student.add_argument("--seed", type=int, default=0, metavar="N", help="seed of weights, sampling and augmentation")
    student.add_argument("--workers", type=int, default=1, metavar="N", help="data loader processes")
    student.add_argument("--checkpoint-every", type=int, default=200, metavar="N", help="steps between checkpoints")
    student.add_argument("--vgg-weights", default=None, metavar="PATH", help="local VGG19 weights for a perceptual loss")
    student.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    student.set_defaults(run=_student)


def _student(args: argparse.Namespace) -> int:
    from models.data.paired import DatasetError
    from models.export import current_command
    from models.megaportraits.student import student_config
    from models.megaportraits.train_student import StudentTrainConfig, check_student_config, train_student
    from models.training.common import TrainingError

    config = StudentTrainConfig(
        data=str(args.data),
        run_dir=str(args.run_dir),
        preset=args.preset,
        target=args.target,
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        colour_jitter=args.jitter,
        warp=args.warp,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        vgg_weights=args.vgg_weights,
        teacher=args.teacher,
        command=current_command(),
    )
    try:
        check_student_config(config)
        model_config = student_config(config.preset, num_avatars=1)
        if args.dry_run:
            print(json.dumps({"train": asdict(config), "model (avatars from the dataset)": asdict(model_config)}, indent=2))
            return 0
        summary = train_student(config)
    except (TrainingError, DatasetError, ValueError) as error:
        return _refuse("student", error)
    print(
        f"trained to step {summary.steps} in {summary.run_dir}; last losses {summary.final_losses}; "
        f"{summary.samples_per_second:.1f} samples/s"
    )
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="export a student checkpoint to ONNX (opset 20) + JSON sidecar, parity-checked",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    export.add_argument("--checkpoint", type=Path, required=True, metavar="PATH", help="RUN/checkpoint.pt")
    export.add_argument("--out", type=Path, required=True, metavar="PATH", help="output .onnx (sidecar .json and thumbnails beside it)")
    export.add_argument("--preset", default=None, metavar="NAME", help="refuse unless the checkpoint has this preset")
    export.add_argument(
        "--adapter",
        dest="adapters",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="an adapter RUN/checkpoint.pt trained against this student (repeat: arkit, landmarks)",
    )
    export.add_argument("--dry-run", action="store_true", help="check the checkpoint and print what would be written")
    export.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from models.data.paired import DatasetError
    from models.export import current_command, export_student, load_student_export
    from models.training.common import TrainingError

    try:
        student = load_student_export(args.checkpoint, adapters=args.adapters, expect_preset=args.preset)
    except (TrainingError, DatasetError) as error:
        return _refuse("export", error)
    if args.dry_run:
        print(json.dumps(student.describe(args.out), indent=2))
        return 0
    report = export_student(student, args.out, command=current_command())
    print(
        f"wrote {report.model_path} ({report.onnx_bytes / 1e6:.1f} MB) with drivers {', '.join(student.drivers)}, "
        f"{report.sidecar_path}; ONNX Runtime vs PyTorch max abs error {report.max_abs_error:.2e}"
    )
    return 0


def _add_adapter(commands: argparse._SubParsersAction) -> None:
    adapter = commands.add_parser(
        "adapter",
        help="train a driver adapter (ARKit curves or landmarks -> the student's driving code) for a trained student",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    adapter.add_argument("--kind", required=True, metavar="KIND", help="arkit | landmarks")
    adapter.add_argument("--student", type=Path, required=True, metavar="PATH", help="the student's RUN/checkpoint.pt (kept frozen)")
    adapter.add_argument("--data", type=Path, required=True, metavar="DIR", help="paired dataset folder (the student's)")
    adapter.add_argument(
        "--run", dest="run_dir", type=Path, required=True, metavar="DIR", help="run folder (config, checkpoint, log, samples)"
    )
    adapter.add_argument("--steps", type=int, default=1500, metavar="N", help="optimiser steps in total (resume counts on)")
    adapter.add_argument("--batch", type=int, default=8, metavar="N", help="pairs per step")
    adapter.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="initial learning rate (cosine to 1e-5)")
    adapter.add_argument("--seed", type=int, default=0, metavar="N", help="seed of weights, sampling and noise")
    adapter.add_argument("--workers", type=int, default=1, metavar="N", help="data loader processes")
    adapter.add_argument("--checkpoint-every", type=int, default=200, metavar="N", help="steps between checkpoints")
    adapter.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    adapter.set_defaults(run=_adapter)


def _adapter(args: argparse.Namespace) -> int:
    from models.data.paired import DatasetError
    from models.export import current_command
    from models.megaportraits.train_adapter import AdapterTrainConfig, check_adapter_config, train_adapter
    from models.training.common import TrainingError

    config = AdapterTrainConfig(
        kind=args.kind,
        student=str(args.student),
        data=str(args.data),
        run_dir=str(args.run_dir),
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        command=current_command(),
    )
    try:
        check_adapter_config(config)
        if args.dry_run:
            print(json.dumps({"train": asdict(config)}, indent=2))
            return 0
        summary = train_adapter(config)
    except (TrainingError, DatasetError, ValueError) as error:
        return _refuse("adapter", error)
    print(
        f"trained the {config.kind} adapter to step {summary.steps} in {summary.run_dir}; last losses {summary.final_losses}; "
        f"{summary.samples_per_second:.1f} samples/s"
    )
    return 0


def _add_base(commands: argparse._SubParsersAction) -> None:
    base = commands.add_parser(
        "base",
        help="train the MegaPortraits base model (the teacher), plain or under torchrun (DDP)",
        description="Train the MegaPortraits base model on self- and cross-reenactment pairs. One process, or "
        "`torchrun --nproc_per_node=N -m models.cli base ...` (DDP: gloo on CPU, nccl on GPU; --batch is per process). "
        "Resumes exactly from RUN/checkpoint.pt when it exists. Perceptual losses run only with local weights files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    base.add_argument("--preset", default="cpu128", metavar="NAME", help="model preset: tiny (64 px, tests), cpu128, paper256, paper512")
    base.add_argument(
        "--data",
        default="synthetic",
        metavar="SRC",
        help="synthetic (SyntheticHeads, on the fly) | a `megalive-train prepare` folder (real video, resized to the preset)",
    )
    base.add_argument(
        "--run",
        "--run-dir",
        dest="run_dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="run folder (config, checkpoint, log, samples, tensorboard); under torchrun write --run-dir "
        "(torchrun's parser reads --run as its own --run-path)",
    )
    base.add_argument("--steps", type=int, default=20_000, metavar="N", help="optimiser steps in total (resume counts on)")
    base.add_argument("--batch", type=int, default=2, metavar="N", help="samples per process and step (each: a self- and a cross-pair)")
    base.add_argument("--lr", type=float, default=2e-4, metavar="LR", help="initial learning rate of both networks (cosine to 1e-6)")
    base.add_argument("--jitter", type=float, default=0.5, metavar="X", help="driver colour jitter strength [0-1]")
    base.add_argument("--warp", type=float, default=0.06, metavar="X", help="driver thin-plate-spline displacement [0-0.2]")
    base.add_argument("--identities", type=int, default=1000, metavar="N", help="synthetic identity pool [2-]")
    base.add_argument("--seed", type=int, default=0, metavar="N", help="seed of weights, data order and augmentation")
    base.add_argument("--workers", type=int, default=1, metavar="N", help="data loader processes per training process")
    base.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="steps between checkpoints (and samples.png)")
    base.add_argument("--log-every", type=int, default=25, metavar="N", help="steps between log lines and TensorBoard scalars")
    base.add_argument("--vgg-weights", default=None, metavar="PATH", help="local VGG19 `features` state dict (perceptual λ=20)")
    base.add_argument("--face-weights", default=None, metavar="PATH", help="local VGG-Face state dict (perceptual λ=4)")
    base.add_argument("--gaze-weights", default=None, metavar="PATH", help="local gaze network state dict (perceptual λ=5)")
    base.add_argument("--init", default=None, metavar="PATH", help="start from this base checkpoint's weights (same preset)")
    base.add_argument("--device", default="auto", metavar="DEV", help="auto | cpu | cuda (under torchrun: one GPU per process)")
    base.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bfloat16, else float16 with scaling)")
    base.add_argument(
        "--stop-at", type=int, default=None, metavar="N", help="end this invocation at step N (the schedule still spans --steps)"
    )
    base.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    base.set_defaults(run=_base)


def _base(args: argparse.Namespace) -> int:
    from models.export import current_command
    from models.megaportraits.base import base_config
    from models.megaportraits.train_base import (
        BaseTrainConfig,
        check_base_config,
        resolve_device,
        resolved_config,
        train_base,
        training_data,
        world_size_from_environment,
    )
    from models.training.common import TrainingError

    config = BaseTrainConfig(
        run_dir=str(args.run_dir),
        preset=args.preset,
        data=args.data,
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        colour_jitter=args.jitter,
        warp=args.warp,
        identities=args.identities,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        vgg_weights=args.vgg_weights,
        face_weights=args.face_weights,
        gaze_weights=args.gaze_weights,
        init=args.init,
        device=args.device,
        amp=args.amp,
        command=current_command(),
    )
    try:
        check_base_config(config)
        if args.dry_run:
            device = resolve_device(config)
            data = training_data(config, resolution=base_config(config.preset).resolution).describe()
            print(json.dumps(resolved_config(config, world_size=world_size_from_environment(), device=device, data=data), indent=2))
            return 0
        summary = train_base(config, stop_at=args.stop_at)
    except (TrainingError, ValueError, OSError) as error:
        return _end_process(_refuse("base", error), distributed=world_size_from_environment() > 1)
    if summary.rank == 0:
        agreement = "" if summary.world_size == 1 else ("; all processes agree" if summary.replicas_agree else "; PROCESSES DIFFER")
        print(
            f"trained the base model to step {summary.steps} in {summary.run_dir} on {summary.world_size} process(es); "
            f"last losses {summary.final_losses}; {summary.samples_per_second:.2f} samples/s; weights {summary.weights_digest}{agreement}"
        )
    return _end_process(0, distributed=summary.world_size > 1)


def _end_process(status: int, *, distributed: bool) -> int:
    """A torchrun worker ends here, without interpreter finalisation. DDP keeps gloo's worker threads alive past
    destroy_process_group (torch 2.13), and one that drops the last tensor of a finished collective while Python
    finalises aborts the whole run (SIGABRT, "terminate called without an active exception"; twice in about 350
    runs here, once in CI). Everything the run writes is closed and renamed into place by then."""
    if not distributed:
        return status
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _add_regressor(commands: argparse._SubParsersAction) -> None:
    regressor = commands.add_parser(
        "regressor",
        help="train the benchmark's parameter regressor (image -> pose, ARKit controls, identity) on SyntheticHeads renders",
        description="Train the small network `megalive-train eval --regressor` measures motion and identity errors with. "
        "It reads foregrounds on white at 64 px; its own error on held-out renders is printed and stored in the checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    regressor.add_argument("--out", type=Path, required=True, metavar="PATH", help="checkpoint to write (.pt)")
    regressor.add_argument("--renders", type=int, default=6000, metavar="N", help="training images, rendered once at 128 px")
    regressor.add_argument("--steps", type=int, default=3000, metavar="N", help="optimiser steps")
    regressor.add_argument("--batch", type=int, default=64, metavar="N", help="images per step")
    regressor.add_argument("--lr", type=float, default=2e-3, metavar="LR", help="initial learning rate (cosine to 1/100 of it)")
    regressor.add_argument("--seed", type=int, default=7, metavar="N", help="seed of identities, motions, weights and batches")
    regressor.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    regressor.set_defaults(run=_regressor)


def _regressor(args: argparse.Namespace) -> int:
    from models.export import current_command
    from models.parameter_regressor import RegressorConfig, RegressorTrainConfig, train_regressor
    from models.training.common import TrainingError

    config = RegressorTrainConfig(
        out=str(args.out),
        renders=args.renders,
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        seed=args.seed,
        command=current_command(),
    )
    if args.dry_run:
        print(json.dumps({"train": asdict(config), "model": asdict(RegressorConfig())}, indent=2))
        return 0
    try:
        summary = train_regressor(config)
    except (TrainingError, OSError) as error:
        return _refuse("regressor", error)
    errors = summary.held_out
    print(
        f"trained the parameter regressor ({summary.steps} steps, {summary.seconds / 60:.1f} min) -> {summary.path}; "
        f"on held-out renders: rotation {errors.rotation_deg:.2f}°, expression {errors.expression:.4f}, identity {errors.identity:.3f} σ"
    )
    return 0


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser(
        "prepare",
        help="crop faces from a folder of real videos (or frame folders) for training: crops, 68 landmarks, masks",
        description="Find the face in every frame with mediapipe's bundled face mesh, crop a square box smoothed over "
        "the whole video (framed like SyntheticHeads), map 68 landmarks from the 478 and segment the foreground. "
        "Videos that cannot be read or show no face are listed in DST/meta.json and skipped; the rest is prepared. "
        "Written under a temporary name, renamed when complete. Layout: models/data/prepare.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    prepare.add_argument("src", type=Path, metavar="SRC", help="folder of videos (.mp4 .mov .mkv .avi .webm .m4v) and/or frame folders")
    prepare.add_argument("dst", type=Path, metavar="DST", help="new dataset folder (must not exist)")
    prepare.add_argument("--resolution", type=int, default=256, metavar="PX", help="side of the square crops [32-1024]")
    prepare.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N", help="processes, one video each [1-64]")
    prepare.add_argument(
        "--min-face-fraction", type=float, default=0.5, metavar="X", help="skip a video whose face is found in fewer of its frames [0-1]"
    )
    prepare.add_argument("--every", type=int, default=1, metavar="K", help="keep every K-th frame [1-]")
    prepare.add_argument("--smoothing", type=float, default=0.5, metavar="S", help="seconds spanned by the box-track smoothing [0-10]")
    prepare.add_argument("--dry-run", action="store_true", help="print the resolved config and the inputs found, write nothing")
    prepare.set_defaults(run=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from models.data.prepare import PrepareConfig, PrepareError, discover_inputs, prepare_videos

    try:
        config = PrepareConfig(  # checks its own ranges (ValueError)
            resolution=args.resolution, min_face_fraction=args.min_face_fraction, every=args.every, smoothing_seconds=args.smoothing
        )
    except ValueError as error:
        # The config names its fields; say the option the user typed.
        options = {
            "min_face_fraction": "--min-face-fraction",
            "smoothing_seconds": "--smoothing",
            "resolution": "--resolution",
            "every": "--every",
        }
        message = str(error)
        for field_name, option in options.items():
            message = message.replace(field_name, option, 1) if message.startswith(field_name) else message
        return _refuse("prepare", message)
    if not 1 <= args.workers <= 64:  # not part of the config: how many processes prepare it
        return _refuse("prepare", "--workers must be in [1, 64]")
    try:
        if args.dst.exists():
            raise PrepareError(f"{args.dst} exists already; choose a new folder (nothing was overwritten)")
        if args.dry_run:
            inputs = discover_inputs(args.src)
            print(
                json.dumps(
                    {
                        "config": asdict(config),
                        "workers": args.workers,
                        "src": str(args.src),
                        "dst": str(args.dst),
                        "inputs": [f"{video.source} ({video.kind}) -> videos/{video.name}" for video in inputs],
                    },
                    indent=2,
                )
            )
            return 0
        report = prepare_videos(args.src, args.dst, config=config, workers=args.workers, command=args.invocation)
    except (PrepareError, ValueError, OSError) as error:
        return _refuse("prepare", error)
    print(
        f"prepared {len(report.videos)} video(s), {report.frames} frames at {config.resolution}×{config.resolution}, "
        f"into {report.root} (look at {report.root / 'preview.png'}); skipped {len(report.skipped)}"
        + "".join(f"\n  skipped {video.source}: {video.reason}" for video in report.skipped)
    )
    return 0


def _add_eval(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="the reenactment benchmark: a student or teacher on held-out drivers and motions, "
        "beside source-copy and driver-copy baselines",
        description="Cross- and self-reenactment on held-out SyntheticHeads identities and motions against the renderer's ground truth: "
        "PSNR/SSIM (full frame and foreground on white) and, with --regressor, motion and identity errors, each beside the "
        "baselines 'source copy' and 'driver copy' measured in the same run. The same draws for every model, so a student and "
        "a teacher evaluated with the same --data, --motions and --clips sit side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    evaluate.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="PATH",
        help="an exported student (.onnx with sidecar) or a teacher (`megalive-train base` RUN/checkpoint.pt)",
    )
    evaluate.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="the student's training dataset: its avatars are the sources (required for a student; for a teacher, "
        "without it the sources are held-out identities)",
    )
    evaluate.add_argument(
        "--regressor",
        type=Path,
        default=None,
        metavar="PATH",
        help="`megalive-train regressor` checkpoint for motion and identity errors (absent without it)",
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for eval-<motions>[-<driver>].json and contact-sheet-<motions>[-<driver>].png",
    )
    evaluate.add_argument("--clips", type=int, default=8, metavar="N", help="held-out clips (one new driver identity each)")
    evaluate.add_argument("--frames", type=int, default=25, metavar="N", help="frames per clip")
    evaluate.add_argument(
        "--motions", default="clips", metavar="SET", help="clips: smooth held-out performances | random: independent held-out poses"
    )
    evaluate.add_argument(
        "--driver",
        default="image",
        metavar="KIND",
        help="image: the driver's render | arkit: its exact motion as ARKit curves | landmarks: its 68 landmarks (student only)",
    )
    evaluate.add_argument(
        "--sources", type=int, default=8, metavar="N", help="held-out source identities when there is no --data (teacher)"
    )
    evaluate.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    evaluate.set_defaults(run=_eval)


def _eval(args: argparse.Namespace) -> int:
    from models.data.paired import DatasetError
    from models.evaluation import EvalConfig, evaluate, write_report
    from models.training.common import TrainingError

    config = EvalConfig(
        model=str(args.model),
        data=None if args.data is None else str(args.data),
        regressor=None if args.regressor is None else str(args.regressor),
        clips=args.clips,
        frames_per_clip=args.frames,
        motions=args.motions,
        driver=args.driver,
        sources=args.sources,
    )
    if args.dry_run:
        print(json.dumps({"eval": asdict(config)}, indent=2))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        report = evaluate(config, sheet_path=args.out / f"contact-sheet-{config.name}.png")
    except (DatasetError, TrainingError, ValueError, OSError) as error:
        return _refuse("eval", error)
    write_report(report, config, args.out / f"eval-{config.name}.json")
    print(report.table())
    return 0


def _add_eval_table(commands: argparse._SubParsersAction) -> None:
    table = commands.add_parser(
        "eval-table",
        help="one Markdown table of several `eval` reports of the same pairs: teacher and student side by side",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    table.add_argument("reports", type=Path, nargs="+", metavar="EVAL.json", help="reports written by `megalive-train eval`")
    table.add_argument("--out", type=Path, default=None, metavar="PATH", help="also write the table to this .md file")
    table.set_defaults(run=_eval_table)


def _eval_table(args: argparse.Namespace) -> int:
    from models.evaluation import side_by_side_table

    try:
        text = side_by_side_table([json.loads(path.read_text(encoding="utf-8")) for path in args.reports])
        if args.out is not None:
            temporary = args.out.with_name(f".{args.out.name}.tmp")
            temporary.write_text(text + "\n", encoding="utf-8")
            temporary.replace(args.out)
    except (OSError, ValueError, KeyError) as error:
        return _refuse("eval-table", error)
    print(text)
    return 0


def _add_demo_clip(commands: argparse._SubParsersAction) -> None:
    clip = commands.add_parser(
        "demo-clip",
        help="render the demo's driver clip (identities that are not avatars) as an MP4",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    clip.add_argument("--out", type=Path, required=True, metavar="PATH", help="output .mp4")
    clip.add_argument("--resolution", type=int, default=256, metavar="PX", help="square resolution")
    clip.add_argument("--identities", type=int, default=2, metavar="N", help="driver identities, one after the other")
    clip.add_argument("--seconds", type=float, default=4.0, metavar="S", help="seconds per identity")
    clip.add_argument("--seed", type=int, default=7, metavar="N", help="seed of identities and motion")
    clip.set_defaults(run=_demo_clip)


def _demo_clip(args: argparse.Namespace) -> int:
    from models.data.demo_clip import render_driver_clip

    frames = render_driver_clip(
        args.out, resolution=args.resolution, seconds_per_identity=args.seconds, identities=args.identities, seed=args.seed
    )
    print(f"wrote {args.out} ({frames} frames, {args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megalive-train", description="MegaLive model factory: data, training, distillation, export.")
    parser.add_argument("--version", action="version", version=f"megalive-train {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_contract_model(commands)
    _add_synth(commands)
    _add_student(commands)
    _add_adapter(commands)
    _add_base(commands)
    _add_prepare(commands)
    _add_export(commands)
    _add_regressor(commands)
    _add_eval(commands)
    _add_eval_table(commands)
    _add_demo_clip(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command as typed (also when main() is called with an argv, as tests do); without importing
    # models.export, whose current_command would load torch for commands that never need it.
    args.invocation = shlex.join(["megalive-train", *(sys.argv[1:] if argv is None else argv)])
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
