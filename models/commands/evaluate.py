"""`megalive-train` export and evaluation commands: export, eval, eval-table, sweeps."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from contract.model_card import PRECISIONS
from models.commands.common import refuse


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_export(commands)
    _add_quantize(commands)
    _add_eval(commands)
    _add_eval_table(commands)
    _add_sweeps(commands)


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
        "--landmark-solver",
        type=Path,
        default=None,
        metavar="PATH",
        help="a `megalive-train landmark-solver` checkpoint: adds the landmarks driver (OUT.landmarks.onnx)",
    )
    export.add_argument(
        "--puppet-resolution",
        type=int,
        default=None,
        metavar="PX",
        help="the side the capture drivers' puppet draws at before the student reads it (default: 3/8 of the student's)",
    )
    export.add_argument(
        "--no-capture", dest="capture", action="store_false", help="the image driver only (no OUT.arkit.onnx / OUT.landmarks.onnx)"
    )
    export.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="the graphs' arithmetic: fp16 halves the weights for GPU providers (inputs and outputs stay float32)",
    )
    export.add_argument("--dry-run", action="store_true", help="check the checkpoint and print what would be written")
    export.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from models.data.paired import DatasetError
    from models.export import current_command, export_student, load_student_export
    from models.training.common import TrainingError

    try:
        student = load_student_export(
            args.checkpoint,
            capture=args.capture,
            landmark_solver=args.landmark_solver,
            puppet_resolution=args.puppet_resolution,
            expect_preset=args.preset,
        )
    except (TrainingError, DatasetError) as error:
        return refuse("export", error)
    if args.dry_run:
        print(json.dumps(student.describe(args.out), indent=2))
        return 0
    report = export_student(student, args.out, command=current_command(), precision=args.precision)
    print(
        f"wrote {report.model_path} ({report.onnx_bytes / 1e6:.1f} MB, {args.precision}) with drivers {', '.join(student.drivers)}, "
        f"{report.sidecar_path}; ONNX Runtime vs PyTorch max abs error {report.max_abs_error:.2e}"
    )
    return 0


def _add_quantize(commands: argparse._SubParsersAction) -> None:
    quantize = commands.add_parser(
        "quantize",
        help="an int8 copy of an exported student (ONNX Runtime static quantisation, calibrated on driver frames)",
        description="Quantise the convolutions of an exported picture-driven model's main graph to int8 (QDQ: per-channel "
        "int8 weights, uint8 activations calibrated on driver frames of a `megalive-train synth` folder) and write the "
        "model into OUT with the sidecar's digest, precision and command updated; its other files are copied. Evaluate it "
        "with `megalive-train eval` and time it with `megalive bench` beside the fp32 model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    quantize.add_argument("--model", type=Path, required=True, metavar="PATH", help="the exported fp32 model (.onnx, sidecar beside it)")
    quantize.add_argument("--data", type=Path, required=True, metavar="DIR", help="a `megalive-train synth` folder: calibration drivers")
    quantize.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder the int8 model is written into")
    quantize.add_argument("--calibration", type=int, default=32, metavar="N", help="driver frames the activation ranges come from")
    quantize.add_argument(
        "--float-tail",
        type=int,
        default=4,
        metavar="N",
        help="the last N convolutions stay float (int8 there bands smooth gradients into contours)",
    )
    quantize.add_argument("--dry-run", action="store_true", help="check the model and the data and print what would be written")
    quantize.set_defaults(run=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from contract.model_card import ModelCardError, read_model_card
    from models.export import current_command
    from models.quantize import QuantizeError, calibration_frames, quantize_avatar_model

    try:
        card = read_model_card(args.model)
        frames = calibration_frames(args.data, count=args.calibration, resolution=card.resolution)
        if args.dry_run:
            described = {"model": str(args.model), "out": str(args.out / args.model.name), "calibration_frames": len(frames)}
            print(json.dumps(described, indent=2))
            return 0
        if args.float_tail < 0:
            raise QuantizeError("--float-tail must be 0 or more")
        report = quantize_avatar_model(
            model_path=args.model, out_dir=args.out, frames=frames, command=current_command(), float_tail=args.float_tail
        )
    except (ModelCardError, QuantizeError) as error:
        return refuse("quantize", error)
    print(
        f"wrote {report.model_path} ({report.quantised_convolutions} convolutions int8, {report.float_convolutions} float; "
        f"{report.int8_bytes / 1e6:.1f} MB against {report.fp32_bytes / 1e6:.1f} MB fp32) "
        f"calibrated on {report.calibration_frames} frames; rgb against fp32 on them: max {report.max_abs_difference:.3f}, "
        f"mean {report.mean_abs_difference:.4f}"
    )
    return 0


def _add_eval(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="the reenactment benchmark: a student or teacher on held-out drivers and motions, "
        "beside source-copy and driver-copy baselines",
        description="Cross- and self-reenactment on held-out SyntheticHeads identities and motions against the renderer's ground truth: "
        "PSNR/SSIM (full frame and foreground on white), eye and mouth PSNR (in the target's eye and mouth boxes), perceptual "
        "distance (EfficientNet-Lite0; whole picture, and between the eye boxes and the mouth boxes), CSIM-dlib (against the "
        "target and the source image), FD-EffNet and, with --regressor, "
        "motion and identity errors (beside the ARKit error of answering zero), each beside the baselines 'source copy' and "
        "'driver copy' measured in the same run. A metric network whose weight files are missing (make nets) leaves its figures "
        "absent, and the report says why. The same draws for every model, so a student and a teacher evaluated with the same "
        "--data, --motions and --clips sit side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    evaluate.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="PATH",
        help="an exported student (.onnx with sidecar), a teacher (`megalive-train base` RUN/checkpoint.pt) or the few-shot "
        "talking heads (`megalive-train fewshot-meta` RUN/checkpoint.pt: with --enroll-shots K, --refine-steps N fine-tunes, "
        "--driver landmarks or arkit)",
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
        help="folder for eval-<name>.json and contact-sheet-<name>.png; name: <motions>[-centred][-<driver>][-enrolled-k<K>]",
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
        "--centred",
        action="store_true",
        help="draw the held-out motions centred at the default size, as ARKit curves place a head (always so for --driver arkit): "
        "the image and landmark drivers on the arkit rows' exact clips",
    )
    evaluate.add_argument(
        "--sources",
        type=int,
        default=8,
        metavar="N",
        help="held-out source identities when there is no --data (a teacher, or a student with --enroll-shots)",
    )
    evaluate.add_argument(
        "--enroll-shots",
        type=int,
        default=0,
        metavar="K",
        help="a contract-v2 student enrolls every source from K frames through its identity embedder (the source image, then "
        "K-1 clip frames) instead of using its own avatars; 0: its own avatars",
    )
    evaluate.add_argument(
        "--refine-steps",
        type=int,
        default=0,
        metavar="N",
        help="with --enroll-shots: refine each enrolled avatar for N steps on its K frames (few-shot: only its identity tensor "
        "moves, as the server's refinement jobs do); 0: the embedder's tensors as they are",
    )
    evaluate.add_argument(
        "--metric-size",
        type=int,
        default=224,
        metavar="PX",
        help="side images are resized to for EfficientNet-Lite0 (perceptual distance, FD-EffNet), so models of different "
        "resolutions compare; 0: as they are",
    )
    evaluate.add_argument(
        "--retarget",
        action="store_true",
        help="--driver landmarks: cross-driving moves the driver's expression and pose onto the avatar's own face shape (its "
        "neutral landmarks plus the driver's displacement from the driver's neutral)",
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
        centred=args.centred,
        sources=args.sources,
        enroll_shots=args.enroll_shots,
        refine_steps=args.refine_steps,
        metric_size=args.metric_size,
        retarget=args.retarget,
    )
    if args.dry_run:
        print(json.dumps({"eval": asdict(config)}, indent=2))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        report = evaluate(config, sheet_path=args.out / f"contact-sheet-{config.name}.png")
    except (DatasetError, TrainingError, ValueError, OSError) as error:
        return refuse("eval", error)
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
    table.add_argument(
        "--label",
        dest="labels",
        action="append",
        default=None,
        metavar="NAME",
        help="a name per report, in order (default: kind and file name)",
    )
    table.set_defaults(run=_eval_table)


def _eval_table(args: argparse.Namespace) -> int:
    from models.evaluation import side_by_side_table

    try:
        text = side_by_side_table([json.loads(path.read_text(encoding="utf-8")) for path in args.reports], labels=args.labels)
        if args.out is not None:
            temporary = args.out.with_name(f".{args.out.name}.tmp")
            temporary.write_text(text + "\n", encoding="utf-8")
            temporary.replace(args.out)
    except (OSError, ValueError, KeyError) as error:
        return refuse("eval-table", error)
    print(text)
    return 0


def _add_sweeps(commands: argparse._SubParsersAction) -> None:
    sweeps = commands.add_parser(
        "sweeps",
        help="single-control sweeps of a model's ARKit driver: a contact sheet per avatar and how much each control changes the face",
        description="Move one wire curve at a time from 0 to its end (1 for a blendshape, the edge of the training range for a head "
        "rotation) through the exported model's arkit graph: OUT/sweeps-<avatar>.jpg (a row per control: the puppet at the end value, "
        "then the avatar at evenly spaced values) and OUT/sweeps.json with the mean change in 8-bit levels inside the region each "
        "control moves, beside the puppet's own.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sweeps.add_argument(
        "--model", type=Path, required=True, metavar="PATH", help="an exported student (.onnx with sidecar) with capture drivers"
    )
    sweeps.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="the dataset it was trained on (its avatars' neutral landmarks)"
    )
    sweeps.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the sheets and sweeps.json")
    sweeps.add_argument("--steps", type=int, default=5, metavar="N", help="values per sweep, 0 to the end value")
    sweeps.add_argument("--tile", type=int, default=128, metavar="PX", help="side of each picture in the sheets (JPEG)")
    sweeps.add_argument("--dry-run", action="store_true", help="print what would be swept and exit")
    sweeps.set_defaults(run=_sweeps)


def _sweeps(args: argparse.Namespace) -> int:
    from contract.model_card import ModelCardError
    from models.data.paired import DatasetError
    from models.sweeps import SWEEPS, run_sweeps

    if args.dry_run:
        print(json.dumps({"model": str(args.model), "steps": args.steps, "sweeps": [asdict(sweep) for sweep in SWEEPS]}, indent=2))
        return 0
    try:
        report = run_sweeps(args.model, args.data, args.out, steps=args.steps, tile=args.tile)
    except (ModelCardError, DatasetError, ValueError, OSError) as error:
        return refuse("sweeps", error)
    print(report.table())
    return 0
