"""`megalive-train export-teacher`: the MegaPortraits teacher (a `megalive-train base` checkpoint, optionally with its
enhancer) as a one-shot avatar model the server serves directly (models/export_teacher.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.commands.common import refuse


def add_commands(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "export-teacher",
        help="export a base-model checkpoint (the teacher) as a one-shot avatar model the server serves (ONNX, contract v2)",
        description="Write a `megalive-train base` checkpoint as OUT.onnx (driver picture + the avatar's encoded source -> rgb, "
        "alpha), OUT.embedder.onnx (a portrait -> its encoded source: the canonical volume and the appearance descriptor), the "
        "avatar bank OUT.avatars.npz and the model card OUT.json, each graph checked against PyTorch on ONNX Runtime CPU "
        "(opset 20: the warps are 5-D grid_sample). With --enhancer the enhancer is part of the graph and the model draws at "
        "twice the teacher's side. Refused in one line, exit 2, nothing written: a checkpoint that is not a base model, a "
        "teacher of another --preset or with given poses, an enhancer of another teacher preset, a portrait without a face.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = command.add_argument
    add("--checkpoint", type=Path, required=True, metavar="PATH", help="`megalive-train base` RUN/checkpoint.pt")
    add("--out", type=Path, required=True, metavar="OUT.onnx", help="the model; its other files are written beside it")
    add("--enhancer", type=Path, default=None, metavar="PATH", help="`megalive-train enhancer` RUN/checkpoint.pt of the same preset")
    add("--portrait", type=Path, nargs="+", default=[], metavar="PHOTO", help="photographs whose faces become the shipped avatars")
    add("--consent", default=None, metavar="TEXT", help="with --portrait: the statement of the people in them that they agree")
    add("--synthetic-avatars", type=int, default=4, metavar="N", help="without --portrait: SyntheticHeads avatars shipped, 1-64")
    add("--preset", default=None, metavar="NAME", help="refuse a teacher of another preset (tiny, cpu128, paper256, paper512)")
    add("--dry-run", action="store_true", help="check the checkpoints and options, print what would be written and exit")
    command.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from models.export_teacher import TeacherExportConfig, export_teacher, identity_layout, load_teacher
    from models.training.common import TrainingError

    try:
        config = TeacherExportConfig(
            checkpoint=str(args.checkpoint),
            out=str(args.out),
            enhancer=None if args.enhancer is None else str(args.enhancer),
            portraits=tuple(str(path) for path in args.portrait),
            consent=args.consent,
            synthetic_avatars=args.synthetic_avatars,
            preset=args.preset,
            command=args.invocation,
        )
        teacher = load_teacher(config)
        if args.dry_run:
            side = teacher.model.config.resolution * (2 if teacher.enhancer is not None else 1)
            print(
                json.dumps(
                    {
                        "out": config.out,
                        "preset": teacher.preset,
                        "step": teacher.step,
                        "resolution": side,
                        "pose_source": teacher.model.config.pose_source,
                        "enhancer": teacher.enhancer_entry,
                        "identity_shape": list(identity_layout(teacher.model).shape),
                        "avatars": list(config.portraits) or f"{config.synthetic_avatars} synthetic",
                    },
                    indent=2,
                )
            )
            return 0
        written = export_teacher(config, teacher=teacher)
    except (TrainingError, ValueError, OSError) as error:
        return refuse("export-teacher", error)
    report = written.report
    print(
        f"wrote {report.model_path} ({written.resolution}×{written.resolution}, teacher {teacher.preset}"
        f"{' + enhancer' if teacher.enhancer is not None else ''}, {len(written.avatars)} avatars, identity "
        f"{'×'.join(map(str, written.identity_shape))}) and its card {report.sidecar_path}; "
        f"ONNX Runtime vs PyTorch max abs error {report.max_abs_error:.2e}"
    )
    return 0
