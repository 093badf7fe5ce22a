"""`megalive-train` data commands: contract-model, synth, prepare, demo-clip."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from models.commands.common import exit_on_sigterm, refuse
from models.config_checks import ConfigRangeError

# Each config checks its own ranges (models/config_checks.py); a refusal names the option the user typed.
CONTRACT_MODEL_OPTIONS = {"resolution": "--resolution", "num_avatars": "--avatars", "width": "--width"}
SYNTH_OPTIONS = {
    "resolution": "--resolution",
    "num_avatars": "--avatars",
    "num_driver_identities": "--drivers",
    "num_motions": "--pairs",
    "batch_size": "--batch",
}
PREPARE_OPTIONS = {
    "resolution": "--resolution",
    "min_face_fraction": "--min-face-fraction",
    "every": "--every",
    "smoothing_seconds": "--smoothing",
}


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_contract_model(commands)
    _add_synth(commands)
    _add_prepare(commands)
    _add_demo_clip(commands)


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

    try:
        config = ContractModelConfig(resolution=args.resolution, num_avatars=args.avatars, width=args.width)
    except ConfigRangeError as error:
        return refuse("contract-model", error.for_option(CONTRACT_MODEL_OPTIONS[error.field]))
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


def _synth(args: argparse.Namespace) -> int:
    import signal
    import threading

    from models.data.paired import DatasetError, SynthConfig, remove_stale_partials, write_paired_dataset
    from models.export import current_command

    try:
        config = SynthConfig(
            resolution=args.resolution,
            num_avatars=args.avatars,
            num_driver_identities=args.drivers,
            num_motions=args.pairs,
            seed=args.seed,
            batch_size=args.batch,
        )
    except ConfigRangeError as error:
        return refuse("synth", error.for_option(SYNTH_OPTIONS[error.field]))
    if args.dry_run:
        print(json.dumps({"config": asdict(config), "out": str(args.out)}, indent=2))
        return 0
    # `kill` and schedulers' time limits send SIGTERM, which would end the process without unwinding: as an exception
    # it removes the partial folder like Ctrl-C does. SIGKILL cannot be caught; the next run removes what it leaves.
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm) if main_thread else None
    try:
        if not args.out.exists():
            for folder in remove_stale_partials(args.out):
                print(f"removed {folder}, the partial folder of an interrupted synth of {args.out}")
        out = write_paired_dataset(args.out, config, command=current_command())
    except DatasetError as error:
        return refuse("synth", error)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
    print(f"wrote {config.num_motions} pairs at {config.resolution}×{config.resolution} to {out} (look at {out / 'contact_sheet.png'})")
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
        config = PrepareConfig(
            resolution=args.resolution, min_face_fraction=args.min_face_fraction, every=args.every, smoothing_seconds=args.smoothing
        )
    except ConfigRangeError as error:
        return refuse("prepare", error.for_option(PREPARE_OPTIONS[error.field]))
    if not 1 <= args.workers <= 64:  # not part of the config: how many processes prepare it
        return refuse("prepare", "--workers must be in [1, 64]")
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
        return refuse("prepare", error)
    print(
        f"prepared {len(report.videos)} video(s), {report.frames} frames at {config.resolution}×{config.resolution}, "
        f"into {report.root} (look at {report.root / 'preview.png'}); skipped {len(report.skipped)}"
        + "".join(f"\n  skipped {video.source}: {video.reason}" for video in report.skipped)
    )
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
