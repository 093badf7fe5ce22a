"""LivePortrait's per-frame networks beside MegaLive's students: ms/frame and frames/s in one run, on one machine, on
the same threads.

LivePortrait (KwaiVGI/LivePortrait) is no part of MegaLive and none of its code is copied here: ``--liveportrait DIR``
names a checkout of it, its networks are imported from DIR/src/modules and built from its own DIR/src/config/models.yaml.
Its weights cannot be downloaded here, so every network has random weights: a network's speed does not depend on its
weight values (the same layers on tensors of the same shapes do the same work).

Shapes are fed as LivePortrait's pipeline feeds them: a 256×256 crop in [0, 1]; the appearance feature extractor makes
the source's 3-D feature volume (32×16×64×64 with its config) once per source image, so it is timed on its own and not
counted per frame; per frame, the motion extractor reads the driver crop, the warping module warps the volume by the
source and driving keypoints (21×3 each, here fixed random points inside the volume: the pipeline's own arithmetic on
them costs microseconds), and the SPADE generator decodes the warped features to 512×512. The stitching and
retargeting MLPs (microseconds) are left out.

MegaLive's students (models/megaportraits/student.py; by default the ``cpu256`` and ``cpu512`` presets, random weights
too) are timed with the graph the server runs (model contract v2: driver and identity tensor in, rgb and alpha out).

Timing goes in rounds, so that a busy machine's drift falls on all networks alike: each round runs one LivePortrait
frame, then ``--student-frames`` frames of each student, on every runtime (PyTorch; with ``--onnx`` also each network
exported to ONNX, opset 20, run by ONNX Runtime on the CPU). A figure is the median over the rounds; a ratio is the
median of the rounds' ratios. Figures are printed, never judged. The torch side is bench/liveportrait_graphs.py.

    .venv/bin/python bench/liveportrait_speed.py --liveportrait ~/src/LivePortrait [--frames 3] [--onnx] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# torch loads only once the input is known to be good (bench/liveportrait_graphs.py): bad input is answered at once.

PROGRAM = "bench/liveportrait_speed.py"
CONFIG_PATH = Path("src", "config", "models.yaml")
# LivePortrait's networks: models.yaml's <key>_params -> (module under src/modules, class), as its own loader pairs them.
NETWORKS = {
    "appearance_feature_extractor": ("appearance_feature_extractor", "AppearanceFeatureExtractor"),
    "motion_extractor": ("motion_extractor", "MotionExtractor"),
    "warping_module": ("warping_network", "WarpingNetwork"),
    "spade_generator": ("spade_generator", "SPADEDecoder"),
}
PER_FRAME = ("motion_extractor", "warping_module", "spade_generator")
LIVEPORTRAIT_TOTAL = "LivePortrait per frame (M + W + G)"
WEIGHTS = "random, LivePortrait's and the students' alike (none can be downloaded here); speed does not depend on weight values"


BUSY_LOAD = 1.0  # a 1-minute load average this high at start means another job held a core's worth of CPU


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class BenchInputError(Exception):
    """Bad input (options, a folder that is not a LivePortrait checkout): one line on stderr, exit code 2."""


# ------------------------------------------------------------------------------------------- LivePortrait's checkout


def parse_scalar(text: str) -> Any:
    if text.startswith("[") and text.endswith("]"):
        return [parse_scalar(part.strip()) for part in text[1:-1].split(",") if part.strip()]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~"):
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def read_block_yaml(text: str) -> dict[str, Any]:
    """The subset of YAML that LivePortrait's models.yaml is written in: ``key: value`` lines nested by indentation,
    ``#`` comments, scalars and flow lists of scalars (``[128, 128, 64]``). Anything else is a ValueError, not a guess
    (PyYAML is not a MegaLive dependency, and this file needs no more)."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]  # (indent of the key that opened it, mapping)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise ValueError(f"line {number}: tab indentation")
        indent = len(line) - len(line.lstrip(" "))
        key, colon, value = line.strip().partition(":")
        if not colon or not key or key.startswith(("-", "[", "{")):
            raise ValueError(f"line {number}: not a `key: value` line: {raw.strip()!r}")
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key.strip()] = parse_scalar(value.strip())
        else:
            child: dict[str, Any] = {}
            parent[key.strip()] = child
            stack.append((indent, child))
    return root


@dataclass(frozen=True)
class Checkout:
    folder: Path
    commit: str  # git commit, or why it is not known
    params: dict[str, dict[str, Any]]  # NETWORKS key -> its constructor's parameters from models.yaml


def read_checkout(folder: Path) -> Checkout:
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise BenchInputError(f"--liveportrait {folder}: no such folder")
    missing = [str(CONFIG_PATH)] if not (folder / CONFIG_PATH).is_file() else []
    missing += [
        f"src/modules/{module}.py" for module, _ in NETWORKS.values() if not (folder / "src" / "modules" / f"{module}.py").is_file()
    ]
    if missing:
        raise BenchInputError(f"--liveportrait {folder} is not a LivePortrait checkout (no {', '.join(missing)})")
    try:
        config = read_block_yaml((folder / CONFIG_PATH).read_text(encoding="utf-8"))
        params = {name: dict(config["model_params"][f"{name}_params"]) for name in NETWORKS}
        num_kp = int(params["warping_module"]["num_kp"])
    except (ValueError, KeyError, TypeError) as error:
        raise BenchInputError(f"{folder / CONFIG_PATH}: not LivePortrait's model config ({error})") from None
    if num_kp < 1:
        raise BenchInputError(f"{folder / CONFIG_PATH}: warping_module_params.num_kp must be at least 1, got {num_kp}")
    return Checkout(folder=folder, commit=git_commit(folder), params=params)


def git_commit(folder: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        changed = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git did not run)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with local changes" if changed.stdout.strip() else "")


# --------------------------------------------------------------------------------------------------------- the report


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median of the rounds' ratios (round by round, so that drift between rounds cancels)."""
    if not numerators or len(numerators) != len(denominators):
        raise ValueError("need the same, non-zero number of rounds on both sides")
    return statistics.median(n / d for n, d in zip(numerators, denominators))


@dataclass(frozen=True)
class Row:
    network: str
    runtime: str  # "pytorch" | "onnxruntime"
    family: str  # "liveportrait" | "student"
    key: str
    per_frame: bool  # counted in LivePortrait's per-frame cost (a student's frame is all of it)
    ms_by_round: tuple[float, ...]

    @property
    def ms(self) -> float:
        return statistics.median(self.ms_by_round)


@dataclass(frozen=True)
class Ratio:
    numerator: str
    denominator: str
    ratio: float  # median of the rounds' ratios


@dataclass(frozen=True)
class Report:
    liveportrait_folder: str
    liveportrait_commit: str
    machine: str
    cores: int  # this process may run on
    threads: int
    torch: str
    onnxruntime: str | None
    niceness: int
    load_average: tuple[float, float, float]
    rounds: int
    student_frames: int
    weights: str
    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    not_exported: dict[str, str] = field(default_factory=dict)  # network -> why it has no ONNX Runtime row


def label(row: Row) -> str:
    return f"{row.network} [{row.runtime}]"


def ratios_of(rows: Sequence[Row]) -> list[Ratio]:
    totals = [row for row in rows if row.network == LIVEPORTRAIT_TOTAL]
    students = [row for row in rows if row.family == "student"]
    ratios = [
        Ratio(label(total), label(student), median_ratio(total.ms_by_round, student.ms_by_round))
        for total in totals
        for student in students
    ]
    for runtime in dict.fromkeys(row.runtime for row in students):
        same = [row for row in students if row.runtime == runtime]
        ratios += [Ratio(label(b), label(a), median_ratio(b.ms_by_round, a.ms_by_round)) for a, b in zip(same, same[1:])]
    return ratios


def print_report(report: Report) -> None:
    print(f"LivePortrait: {report.liveportrait_folder} at commit {report.liveportrait_commit}")
    print(f"weights: {report.weights}")
    onnx = f", onnxruntime {report.onnxruntime}" if report.onnxruntime else ""
    print(f"machine: {report.machine}; {report.threads} threads, torch {report.torch}{onnx}; niceness {report.niceness}, ", end="")
    print(f"load average at start {' '.join(f'{value:.2f}' for value in report.load_average)}")
    if report.load_average[0] >= BUSY_LOAD:
        print(
            f"note: load average {report.load_average[0]:.2f} on {report.cores} cores at start: other jobs shared the CPU, and with several"
            " threads PyTorch's figures also hold its threads waiting for a descheduled peer (--threads 1 avoids that)"
        )
    print(f"{report.rounds} rounds; per round 1 LivePortrait frame and {report.student_frames} frames of each student; medians\n")
    width = max(len(row.network) for row in report.rows)
    print(f"{'network':<{width}}  {'runtime':<11}  {'ms/frame':>10}  {'frames/s':>9}")
    for row in report.rows:
        frames = f"{1000.0 / row.ms:>9.2f}" if row.per_frame else f"{'(once)':>9}"
        print(f"{row.network:<{width}}  {row.runtime:<11}  {row.ms:>10.1f}  {frames}")
    for network, why in report.not_exported.items():
        print(f"{network:<{width}}  {'onnxruntime':<11}  not exported: {why}")
    if report.onnxruntime and not any(row.network == LIVEPORTRAIT_TOTAL and row.runtime == "onnxruntime" for row in report.rows):
        print(f"{LIVEPORTRAIT_TOTAL}: none in onnxruntime (a per-frame network did not export or run there)")
    if report.ratios:
        print("\nratios (ms/frame over ms/frame, median of the rounds):")
        for ratio in report.ratios:
            print(f"  {ratio.numerator} / {ratio.denominator}: ×{ratio.ratio:.1f}")


def run_bench(args: argparse.Namespace, checkout: Checkout, presets: list[str]) -> Report:
    from bench.liveportrait_graphs import LivePortraitImportError, NetworkSource, measure
    from server.bench import machine_description

    load_average = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    sources = {key: NetworkSource(module=module, class_name=name, params=checkout.params[key]) for key, (module, name) in NETWORKS.items()}
    try:
        measurement = measure(
            folder=checkout.folder,
            sources=sources,
            per_frame=PER_FRAME,
            num_kp=int(checkout.params["warping_module"]["num_kp"]),
            presets=presets,
            threads=args.threads,
            rounds=args.frames,
            student_frames=args.student_frames,
            warmup=args.warmup,
            onnx=args.onnx,
        )
    except LivePortraitImportError as error:
        raise BenchInputError(str(error)) from None
    rows: list[Row] = []
    for runtime in ("pytorch", "onnxruntime"):
        timed = [Row(**asdict(timing)) for timing in measurement.timings if timing.runtime == runtime]
        parts = [row for row in timed if row.family == "liveportrait" and row.per_frame]
        if len(parts) == len(PER_FRAME):  # each per-frame network ran on this runtime: their sum, round by round
            total = tuple(float(sum(values)) for values in zip(*(row.ms_by_round for row in parts)))
            parts.append(
                Row(network=LIVEPORTRAIT_TOTAL, runtime=runtime, family="liveportrait", key="total", per_frame=True, ms_by_round=total)
            )
        once = [row for row in timed if row.family == "liveportrait" and not row.per_frame]
        rows += once + parts + [row for row in timed if row.family == "student"]
    return Report(
        liveportrait_folder=str(checkout.folder),
        liveportrait_commit=checkout.commit,
        machine=machine_description(),
        cores=available_cores(),
        threads=args.threads,
        torch=measurement.torch_version,
        onnxruntime=measurement.onnxruntime_version,
        niceness=os.nice(0),
        load_average=load_average,
        rounds=args.frames,
        student_frames=args.student_frames,
        weights=WEIGHTS,
        rows=rows,
        ratios=ratios_of(rows),
        not_exported=measurement.not_exported,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    cores = available_cores()
    table = parser.add_argument
    table("--liveportrait", type=Path, required=True, metavar="DIR", help="a checkout of KwaiVGI/LivePortrait (its src/ is imported)")
    table("--frames", type=int, default=3, metavar="N", help="rounds = LivePortrait frames timed per runtime, ≥ 1 (default 3)")
    table("--student-frames", type=int, default=20, metavar="N", help="frames of each student per round, ≥ 1 (default 20)")
    table("--warmup", type=int, default=1, metavar="N", help="untimed calls of every network first, ≥ 0 (default 1)")
    table(
        "--students",
        default="cpu256,cpu512",
        metavar="LIST",
        help="student presets (models/megaportraits/student.py), comma-separated (default cpu256,cpu512)",
    )
    table("--threads", type=int, default=cores, metavar="N", help=f"PyTorch and ONNX Runtime intra-op threads, ≥ 1 (default {cores}: all)")
    table("--onnx", action="store_true", help="also export every network to ONNX and time it in ONNX Runtime")
    table("--json", type=Path, default=None, metavar="PATH", help="also write the figures to this JSON file")
    table("--dry-run", action="store_true", help="read the checkout and print what would be timed, then stop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.frames < 1 or args.student_frames < 1 or args.warmup < 0 or args.threads < 1:
            raise BenchInputError("need --frames ≥ 1, --student-frames ≥ 1, --warmup ≥ 0 and --threads ≥ 1")
        presets = list(dict.fromkeys(name.strip() for name in args.students.split(",") if name.strip()))
        if not presets:
            raise BenchInputError("--students names no preset")
        checkout = read_checkout(args.liveportrait)
        from models.megaportraits.student import STUDENT_PRESETS  # torch from here on

        unknown = [name for name in presets if name not in STUDENT_PRESETS]
        if unknown:
            raise BenchInputError(f"--students {args.students!r}: unknown preset(s) {unknown} (known: {', '.join(STUDENT_PRESETS)})")
        if args.dry_run:
            print(f"LivePortrait: {checkout.folder} at commit {checkout.commit}")
            for name, params in checkout.params.items():
                print(f"  {name}{' (per frame)' if name in PER_FRAME else ' (once per source)'}: {json.dumps(params)}")
            print(f"students: {', '.join(presets)}; {args.threads} threads; runtimes: pytorch{' and onnxruntime' if args.onnx else ''}")
            rounds = f"{args.frames} rounds of 1 LivePortrait frame and {args.student_frames} frames of each student"
            print(f"{rounds}, after {args.warmup} warm-up calls")
            return 0
        report = run_bench(args, checkout, presets)
    except BenchInputError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    print_report(report)
    if args.json is not None:
        figures = asdict(report)
        for row, figure in zip(report.rows, figures["rows"]):
            figure["ms_per_frame"] = row.ms
            figure["frames_per_s"] = 1000.0 / row.ms if row.per_frame else None
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
