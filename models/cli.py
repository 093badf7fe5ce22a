"""`megalive-train`: the model factory. Each command writes files (checkpoints, ONNX + sidecar)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    try:
        return version("megalive")
    except PackageNotFoundError:
        return "0+unknown"


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

    if not 16 <= args.resolution <= 1024 or args.resolution % 4:
        print("megalive-train contract-model: --resolution must be a multiple of 4 in [16, 1024]", file=sys.stderr)
        return 2
    if not 1 <= args.avatars <= 1024:
        print("megalive-train contract-model: --avatars must be in [1, 1024]", file=sys.stderr)
        return 2
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
    print(f"wrote {report.model_path} ({report.onnx_bytes / 1e6:.1f} MB) and {report.sidecar_path}; "
          f"ONNX Runtime vs PyTorch max abs error {report.max_abs_error:.2e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megalive-train", description="MegaLive model factory: data, training, distillation, export.")
    parser.add_argument("--version", action="version", version=f"megalive-train {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_contract_model(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
