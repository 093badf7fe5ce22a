"""Jitter and lag of capture-driven avatars, with and without the server's One-Euro filters (issue 7).

On held-out SyntheticHeads motions (seeds no training stream uses), for the ARKit and landmarks
drivers of an exported model, through the server's own code (server.drivers.SignalStabiliser and
server.engine.Engine, i.e. what a session does), at 30 frames/s:

- jitter: a performer holding still, with small capture noise (Gaussian; σ = 0.02 on blendshapes,
  0.01 rad on head angles, 0.003 crop units ≈ 0.8 px at 256 on landmarks): the mean absolute
  frame-to-frame change of the output pixels (0-255), unfiltered versus filtered;
- lag: a clean step from one held motion to another: the frames from the step until the output
  has covered half of its own change (the unfiltered output does so on the step's frame: lag 0),
  filtered minus unfiltered = the lag the filter adds.

With ``--sweep`` it measures a grid of (min_cutoff_hz, beta) and marks the settings that cut jitter
by ≥ 3× at ≤ 1 frame of added lag; the server's defaults (server/drivers.py) were chosen from that
table. Prints figures; nothing passes or fails.

    .venv/bin/python bench/capture_stability.py --model assets/default/student.onnx --data runs/synth-256 [--sweep]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.data.heads import SyntheticHeads, sample_identities, sample_motions  # noqa: E402
from models.data.paired import load_identities, read_meta  # noqa: E402
from models.evaluation import HELD_OUT_SEED  # noqa: E402
from server.drivers import DEFAULT_FILTERS, NO_FILTERS, SignalFilterConfig, SignalStabiliser  # noqa: E402
from server.engine import Engine  # noqa: E402
from server.one_euro import OneEuroConfig  # noqa: E402

FPS = 30.0
NOISE = {"blendshapes": 0.02, "head_rad": 0.01, "landmarks": 0.003}


@dataclass(frozen=True)
class Scenario:
    """One avatar, a held motion A and a step to motion B, as both capture signals."""

    avatar: int
    signal_a: dict[str, np.ndarray]  # kind -> the clean signal of motion A
    signal_b: dict[str, np.ndarray]


def scenarios(*, count: int, avatars: int, resolution: int, seed: int) -> list[Scenario]:
    heads = SyntheticHeads(resolution=resolution)
    generator = torch.Generator().manual_seed(seed)
    performers = sample_identities(count, generator=generator)
    motion_a, motion_b = sample_motions(count, generator=generator), sample_motions(count, generator=generator)
    out = []
    with torch.inference_mode():
        landmarks_a = heads.landmarks(performers, motion_a) / resolution
        landmarks_b = heads.landmarks(performers, motion_b) / resolution
    curves_a, curves_b = motion_a.arkit_curves(), motion_b.arkit_curves()
    for index in range(count):
        out.append(Scenario(
            avatar=index % avatars,
            signal_a={"arkit": curves_a[index].numpy().astype(np.float32), "landmarks": landmarks_a[index].numpy().astype(np.float32)},
            signal_b={"arkit": curves_b[index].numpy().astype(np.float32), "landmarks": landmarks_b[index].numpy().astype(np.float32)},
        ))  # fmt: skip
    return out


def noisy(kind: str, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "arkit":
        out = signal.copy()
        out[:52] = np.clip(out[:52] + rng.normal(0, NOISE["blendshapes"], 52), 0, 1)
        out[52:55] += rng.normal(0, NOISE["head_rad"], 3)
        return out.astype(np.float32)
    return (signal + rng.normal(0, NOISE["landmarks"], signal.shape)).astype(np.float32)


def render_sequence(engine: Engine, kind: str, signals: list[np.ndarray], avatar: int, config: SignalFilterConfig) -> np.ndarray:
    """The session's path: stabilise each signal at its frame time, then the engine. Returns T×H×W×3 in 0-255."""
    stabiliser = SignalStabiliser(kind=kind, config=config)
    filtered = np.stack([stabiliser(signal, frame / FPS) for frame, signal in enumerate(signals)])
    rgb = engine.run(filtered.astype(np.float32), np.full(len(signals), avatar, np.int64), kind=kind).rgb  # T×3×H×W
    return rgb.transpose(0, 2, 3, 1) * 255.0


def jitter(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames, axis=0)).mean())


def half_way_frame(frames: np.ndarray, step_at: int) -> int:
    """Frames after the step until the output has covered half its change from before to the end."""
    start, end = frames[step_at - 1], frames[-1]
    total = float(np.abs(end - start).mean())
    for offset, frame in enumerate(frames[step_at:]):
        if float(np.abs(frame - start).mean()) >= 0.5 * total:
            return offset
    return len(frames) - step_at


def measure(
    engine: Engine, cases: list[Scenario], kind: str, config: SignalFilterConfig, *, still: int, hold: int, seed: int
) -> tuple[float, float]:
    """(mean jitter of a noisy held pose, mean frames to half-way after a clean step)."""
    rng = np.random.default_rng(seed)
    jitters, lags = [], []
    for case in cases:
        held = [noisy(kind, case.signal_a[kind], rng) for _ in range(still)]
        jitters.append(jitter(render_sequence(engine, kind, held, case.avatar, config)[still // 3 :]))  # after the filter settles
        step = [case.signal_a[kind]] * hold + [case.signal_b[kind]] * hold
        lags.append(half_way_frame(render_sequence(engine, kind, step, case.avatar, config), hold))
    return float(np.mean(jitters)), float(np.mean(lags))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="exported model with arkit and landmarks graphs")
    parser.add_argument("--data", type=Path, required=True, help="its training dataset (for the avatar count)")
    parser.add_argument("--cases", type=int, default=6, help="held-out scenarios (performer, motion A, motion B)")
    parser.add_argument("--still", type=int, default=45, help="frames of the held, noisy pose")
    parser.add_argument("--hold", type=int, default=20, help="frames before and after the step")
    parser.add_argument("--sweep", action="store_true", help="measure a grid of (min_cutoff_hz, beta) too")
    parser.add_argument(
        "--seed", type=int, default=HELD_OUT_SEED + 7, help="seed of the held-out scenarios (choose defaults on one, report on another)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    engine = Engine(model_path=args.model, max_batch=16)
    meta = read_meta(args.data)
    assert len(load_identities(meta.root / "avatars.npz")) == engine.card.num_avatars
    cases = scenarios(count=args.cases, avatars=engine.card.num_avatars, resolution=engine.resolution[0], seed=args.seed)
    figures: dict[str, dict] = {}
    for kind in ("arkit", "landmarks"):
        raw_jitter, raw_lag = measure(engine, cases, kind, NO_FILTERS, still=args.still, hold=args.hold, seed=args.seed)
        settings = {"default": DEFAULT_FILTERS[kind]}
        if args.sweep:
            for cutoff, beta in itertools.product((0.5, 1.0, 2.0), (0.05, 0.5, 2.0, 8.0)):
                one_euro = OneEuroConfig(min_cutoff_hz=cutoff, beta=beta)
                settings[f"cutoff {cutoff} Hz, beta {beta}"] = SignalFilterConfig(pose=one_euro, expression=one_euro, box=None)
        rows = {}
        print(f"\n{kind}: unfiltered jitter {raw_jitter:.3f} (0-255 per pixel per frame), frames to half-way after a step {raw_lag:.2f}")
        print(f"  {'filter':<30} {'jitter':>8} {'cut':>6} {'added lag (frames)':>19}")
        for name, config in settings.items():
            value, lag = measure(engine, cases, kind, config, still=args.still, hold=args.hold, seed=args.seed)
            cut, added = raw_jitter / value, lag - raw_lag
            rows[name] = {"jitter": value, "jitter_cut": cut, "added_lag_frames": added}
            meets = "meets ≥3×, ≤1 frame" if cut >= 3 and added <= 1 else ""
            print(f"  {name:<30} {value:>8.3f} {cut:>5.1f}× {added:>19.2f}  {meets}")
        figures[kind] = {"unfiltered": {"jitter": raw_jitter, "frames_to_half_way": raw_lag}, "filters": rows}
    figures["setup"] = {
        "seed": args.seed,
        "cases": args.cases,
        "still_frames": args.still,
        "hold_frames": args.hold,
        "fps": FPS,
        "noise": NOISE,
        "model": str(args.model),
        "default_filters": {kind: repr(DEFAULT_FILTERS[kind]) for kind in ("arkit", "landmarks")},
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
