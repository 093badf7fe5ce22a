"""Raw engine speed of several models, interleaved: the int8 copy beside its fp32 model (`megalive-train quantize`), or
any models of one driver kind.

`megalive bench` times one model per run; two runs on a shared box differ by more than int8 gains. Here every model
runs at batch 1 (image driver, random frames) for ``--turn`` seconds in turn, round after round, for ``--seconds`` in
all; each model's figure is the median of its rounds, and each ratio the median over the rounds of the two rates in the
same round. Engines as the server builds them (ONNX Runtime threads not spinning). Figures are printed, never judged.

    .venv/bin/python bench/models_side_by_side.py MODEL.onnx OTHER.onnx [--seconds 30] [--turn 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from server.bench import machine_description  # noqa: E402
from server.engine import Engine, ModelError  # noqa: E402


def interleaved_rates(engines: list[Engine], *, seconds: float, turn_s: float) -> list[list[float]]:
    """Per engine, its frames/s in each round (batch 1, the first avatar, one random frame per engine)."""
    frames = [np.random.default_rng(0).random((1, 3, *engine.resolution), dtype=np.float32) for engine in engines]
    avatar = np.zeros(1, np.int64)
    for engine, frame in zip(engines, frames, strict=True):
        engine.run(frame, avatar)  # untimed: first-call allocations
    rounds: list[list[float]] = [[] for _ in engines]
    began = time.perf_counter()
    while not rounds[-1] or time.perf_counter() - began < seconds:
        for index, (engine, frame) in enumerate(zip(engines, frames, strict=True)):
            runs, turn_began = 0, time.perf_counter()
            while runs == 0 or time.perf_counter() - turn_began < turn_s:
                engine.run(frame, avatar)
                runs += 1
            rounds[index].append(runs / (time.perf_counter() - turn_began))
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL", help="exported models (.onnx, sidecar beside each)")
    parser.add_argument("--seconds", type=float, default=30.0, metavar="S", help="all rounds together")
    parser.add_argument("--turn", type=float, default=1.0, metavar="S", help="each model's turn in a round")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if len(args.models) < 2 or args.seconds <= 0 or args.turn <= 0:
        print("models_side_by_side: give two models or more, and positive --seconds and --turn", file=sys.stderr)
        return 2
    try:
        engines = [Engine(model_path=path, max_batch=1) for path in args.models]
    except ModelError as error:
        print(f"models_side_by_side: {error}", file=sys.stderr)
        return 2
    rounds = interleaved_rates(engines, seconds=args.seconds, turn_s=args.turn)
    first = np.array(rounds[0])
    figures = {
        "machine": machine_description(),
        "rounds": len(rounds[0]),
        "models": [
            {
                "model": str(path),
                "precision": json.loads(path.with_suffix(".json").read_text(encoding="utf-8")).get("precision", "fp32"),
                "frames_per_second": float(np.median(rates)),
                "versus_first": float(np.median(np.array(rates) / first)),
            }
            for path, rates in zip(args.models, rounds, strict=True)
        ],
    }
    print(f"raw engine frames/s at batch 1, interleaved ({figures['rounds']} rounds); machine: {figures['machine']}")
    for entry in figures["models"]:
        print(f"  {entry['model']:<48} {entry['precision']:>5}  {entry['frames_per_second']:6.1f}  ×{entry['versus_first']:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
