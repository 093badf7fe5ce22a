"""`megalive-train`: the model factory. Each command writes files (checkpoints, ONNX + sidecar)."""

from __future__ import annotations

import argparse
import shlex
import sys

from models.commands import data, enhance, enroll, evaluate, export_teacher, fewshot, train
from models.commands.common import package_version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megalive-train", description="MegaLive model factory: data, training, distillation, export.")
    parser.add_argument("--version", action="version", version=f"megalive-train {package_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    data.add_commands(commands)
    train.add_commands(commands)
    fewshot.add_commands(commands)
    evaluate.add_commands(commands)
    enroll.add_commands(commands)
    enhance.add_commands(commands)
    export_teacher.add_commands(commands)
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
