"""`megalive bench`: how fast the engine is, and what the server adds on top.

Phases, each `seconds` long, on this machine:
  1. raw engine FPS: Engine.run at batch 1 in this process, nothing else running; then each capture driver the
     model has (arkit curves, landmarks: the puppet drawn, then the student) and its per-frame cost beside the image
     path's, measured interleaved (short turns of each graph in rounds, the median of the rounds' ratios) so that
     the box's drift between phases does not enter the ratio;
  2. end-to-end: a real `megalive serve` subprocess on loopback, one client session streaming with
     its in-flight window; FPS and round-trip latency percentiles; end to end / raw from interleaved rounds (a turn of
     the engine alone in this process at batch 1, the server idle, then a turn of the stream; the median of the rounds'
     ratios), so that the box's drift between phases (±10 % on the 2-core box) does not enter the ratio;
  3. throughput with 2 and 4 sessions of one client (the server batches them) versus 1, in interleaved rounds (1, 2,
     4 sessions, then again): each round's ratio compares phases seconds apart, so the box's drift between phases
     (as large as the gap at 512 px) does not enter it; the median of the rounds' ratios is reported.
Figures are printed, never judged: speed is compared as ratios within one run.

A landmark-driven model (server/engine.py) takes no camera picture without the face mesh, so its figures go through
the landmarks driver instead (the drawing and the main graph; ``base_driver`` in the report): the raw and watermark
phases time it, its arkit driver is compared with it, and the streams send landmark frames.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from client.client import AvatarClient, Texture
from contract.landmarks import canonical_ibug68
from server.engine import Engine, providers_for

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = match.group(1).strip() if match else model
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, {platform.system()} {platform.release()}"


@dataclass(frozen=True)
class BenchConfig:
    model_path: Path
    seconds: float = 10.0
    window: int = 2
    threads: int = 0
    spin_wait: bool = False  # ONNX Runtime's busy-waiting threads, in the engine and the served server alike
    lanes: int | None = None  # lanes of the engine and the served server (server/engine.py); None: one per core
    session_counts: tuple[int, ...] = (1, 2, 4)  # the first is the reference of the ratios
    session_rounds: int = 3  # interleaved rounds of the session phases; each phase is seconds / session_rounds long
    provider: str | None = None  # cpu | cuda | tensorrt (server/engine.py PROVIDER_CHOICES); None: the best installed


@dataclass(frozen=True)
class StreamFigures:
    sessions: int
    frames: int
    seconds: float
    dropped: int
    latencies_ms: tuple[float, ...] = field(repr=False)
    engine_frames: int  # what the server's engine ran meanwhile (its stats), in engine_runs batches
    engine_runs: int

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def mean_batch(self) -> float:
        return self.engine_frames / self.engine_runs if self.engine_runs else 0.0

    @classmethod
    def combined(cls, parts: list[StreamFigures]) -> StreamFigures:
        """One figure of several phases with the same session count: frames over their summed seconds."""
        assert parts and len({part.sessions for part in parts}) == 1, [part.sessions for part in parts]
        return cls(
            sessions=parts[0].sessions,
            frames=sum(part.frames for part in parts),
            seconds=sum(part.seconds for part in parts),
            dropped=sum(part.dropped for part in parts),
            latencies_ms=tuple(latency for part in parts for latency in part.latencies_ms),
            engine_frames=sum(part.engine_frames for part in parts),
            engine_runs=sum(part.engine_runs for part in parts),
        )

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


@dataclass(frozen=True)
class BenchReport:
    machine: str
    model: str
    resolution: tuple[int, int]
    providers: tuple[str, ...]
    raw_fps: float
    raw_batch4_fps: float  # the engine's own ceiling for batching: what 4 sessions could gain at most
    capture_raw_fps: dict[str, float]  # driver kind -> raw engine FPS at batch 1 through its graph (arkit, landmarks)
    capture_cost_vs_image: dict[str, float]  # driver kind -> its cost per frame / the image path's, interleaved (median)
    gflops_per_frame: float | None
    matmul_peak_gflops: float
    streams: tuple[StreamFigures, ...]  # each session count's rounds combined
    # sessions -> median over the interleaved rounds of (total FPS with that many sessions / with the first count's)
    session_ratios: dict[int, float]
    session_rounds: int
    end_to_end_over_raw: float  # median over interleaved rounds of (one session's FPS / the engine's at batch 1)
    watermark: WatermarkCost | None = None  # live frame rate with and without the provenance watermark, interleaved
    # The driver the raw, watermark and stream phases use, and the capture costs compare with: "image", or "landmarks"
    # for a landmark-driven model (capture_cost_vs_image then holds the costs versus the landmarks driver).
    base_driver: str = "image"
    spin_wait: bool = False  # ONNX Runtime's threads busy-waited (bench --spin-wait)
    lanes: int = 1  # lanes a batch of 2+ frames was split across (server/engine.py), each of threads_per_lane threads
    threads_per_lane: int = 0

    def stream(self, sessions: int) -> StreamFigures:
        return next(s for s in self.streams if s.sessions == sessions)

    def as_dict(self) -> dict:
        single = self.stream(1)
        return {
            "machine": self.machine,
            "model": self.model,
            "driver": self.base_driver,
            "resolution": list(self.resolution),
            "providers": list(self.providers),
            "spin_wait": self.spin_wait,
            "lanes": self.lanes,
            "threads_per_lane": self.threads_per_lane,
            "raw_engine_fps": self.raw_fps,
            "raw_engine_fps_batch4": self.raw_batch4_fps,
            "capture_raw_fps": dict(self.capture_raw_fps),
            "capture_cost_vs_image": dict(self.capture_cost_vs_image),
            "gflops_per_frame": self.gflops_per_frame,
            "achieved_gflops": self.gflops_per_frame * self.raw_fps if self.gflops_per_frame else None,
            "matmul_peak_gflops": self.matmul_peak_gflops,
            "end_to_end_fps": single.fps,
            "end_to_end_over_raw": self.end_to_end_over_raw,
            "round_trip_p50_ms": single.percentile_ms(50),
            "round_trip_p99_ms": single.percentile_ms(99),
            "session_rounds": self.session_rounds,
            "throughput": {
                str(s.sessions): {"fps": s.fps, "vs_1": self.session_ratios[s.sessions], "dropped": s.dropped, "mean_batch": s.mean_batch}
                for s in self.streams
            },
            "watermark": None if self.watermark is None else asdict(self.watermark),
        }

    def table(self) -> str:
        figures = self.as_dict()
        rows = [
            ("raw engine FPS (batch 1)", f"{self.raw_fps:.1f}"),
            ("raw engine FPS (batch 4; × vs batch 1)", f"{self.raw_batch4_fps:.1f} (×{self.raw_batch4_fps / self.raw_fps:.2f})"),
            *(
                (
                    f"raw engine FPS, {kind} driver (cost per frame × vs {self.base_driver}, interleaved)",
                    f"{fps:.1f} (×{self.capture_cost_vs_image[kind]:.2f})",
                )
                for kind, fps in self.capture_raw_fps.items()
            ),
            ("fp32 matmul peak of this box (GFLOP/s)", f"{self.matmul_peak_gflops:.0f}"),
            (
                "model GFLOP/frame; achieved GFLOP/s at batch 1 (% of peak)",
                f"{self.gflops_per_frame:.2f}; {figures['achieved_gflops']:.1f} "
                f"({100 * figures['achieved_gflops'] / self.matmul_peak_gflops:.0f} %)"
                if self.gflops_per_frame
                else "unknown (no gflops_per_frame in the sidecar)",
            ),
            ("end-to-end FPS (1 session, loopback)", f"{figures['end_to_end_fps']:.1f}"),
            (f"end-to-end / raw (median of {self.session_rounds} interleaved rounds)", f"{figures['end_to_end_over_raw']:.2f}"),
            ("round trip p50 / p99 (ms)", f"{figures['round_trip_p50_ms']:.1f} / {figures['round_trip_p99_ms']:.1f}"),
            ("p99 / p50", f"{figures['round_trip_p99_ms'] / figures['round_trip_p50_ms']:.2f}"),
        ]
        for sessions, entry in figures["throughput"].items():
            rows.append(
                (
                    f"{sessions} session(s): total FPS (× vs 1, median of {self.session_rounds} interleaved rounds; mean batch)",
                    f"{entry['fps']:.1f} (×{entry['vs_1']:.2f}; {entry['mean_batch']:.2f})",
                )
            )
        if self.watermark is not None:
            cost = self.watermark
            rows.append(
                (
                    "live FPS without / with watermark (ratio, target ≥ 0.85)",
                    f"unavailable: {cost.unavailable}"
                    if cost.unavailable
                    else f"{cost.fps_without:.1f} / {cost.fps_with:.1f} "
                    f"(×{cost.ratio:.2f}, target {'met' if cost.ratio >= 0.85 else 'NOT met'})",
                )
            )
        width = max(len(name) for name, _ in rows)
        driven = "" if self.base_driver == "image" else f" (landmark-driven: measured through the {self.base_driver} driver)"
        header = (
            f"MegaLive bench — {self.model} {self.resolution[0]}×{self.resolution[1]} on {', '.join(self.providers)}{driven}, "
            f"ONNX Runtime threads {'spinning' if self.spin_wait else 'not spinning'} between operators, "
            f"{'no lanes' if self.lanes < 2 else f'batches of 2+ split across {self.lanes} lanes of {self.threads_per_lane} thread(s)'}\n"
            f"machine: {self.machine}\n"
        )
        return header + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


class PhaseProgress:
    """A progress bar over a timed phase (on stderr; the table goes to stdout)."""

    def __init__(self, *, seconds: float, description: str) -> None:
        self.bar = tqdm(
            total=round(seconds, 1),
            desc=description,
            unit="s",
            leave=False,
            mininterval=0.25,
            bar_format="{desc}: {bar} {n:.1f}/{total:.1f} s",
        )

    def show(self, elapsed_s: float) -> None:
        self.bar.n = round(min(elapsed_s, self.bar.total), 1)
        self.bar.update(0)  # redraws at most every mininterval

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()


def _driver_frames(resolution: tuple[int, int], count: int = 8, *, driver: str = "image") -> list[np.ndarray]:
    """Frames to stream: random pictures, or (driver landmarks) a neutral face's 68 points moved a little each frame."""
    generator = np.random.default_rng(0)
    if driver == "landmarks":
        face = np.asarray(canonical_ibug68(), np.float32)
        return [(face + generator.normal(0.0, 0.003, face.shape)).astype(np.float32) for _ in range(count)]
    return [generator.integers(0, 256, (*resolution, 3), dtype=np.uint8) for _ in range(count)]


def base_driver(engine: Engine) -> str:
    """The driver bench times the model through: the image path, or a landmark-driven model's landmarks (it draws them
    itself; its pictures need the face mesh, which bench leaves out)."""
    return "landmarks" if engine.landmark_driven else "image"


def measure_matmul_peak_gflops(size: int = 1024, seconds: float = 2.0) -> float:
    """The box's fp32 matrix-multiply rate through numpy's BLAS (all cores): the best of repeated runs."""
    generator = np.random.default_rng(0)
    a = generator.random((size, size), dtype=np.float32)
    b = generator.random((size, size), dtype=np.float32)
    best = 0.0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        np.matmul(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def capture_signal(kind: str, shape: tuple[int, ...], batch: int) -> np.ndarray:
    """A capture frame of ``kind`` for timing: a neutral face's landmarks, or every ARKit curve at 0.2."""
    if kind == "landmarks":
        return np.ascontiguousarray(np.broadcast_to(canonical_ibug68(), (batch, *shape)), dtype=np.float32)
    return np.full((batch, *shape), 0.2, np.float32)


def _engine_signal(engine: Engine, kind: str, batch: int) -> np.ndarray:
    """A batch of driver frames (image: B×3×H×W in [0, 1]) or capture frames of ``kind`` for timing."""
    if kind == "image":
        frames = np.stack(_driver_frames(engine.resolution, count=batch)).transpose(0, 3, 1, 2)  # B×H×W×3 -> B×3×H×W
        return np.ascontiguousarray(frames, dtype=np.float32) / np.float32(255.0)
    graph = engine.card.adapter(kind)
    if graph is None:  # a landmark-driven model draws its landmarks itself: no graph, 68 points per frame
        assert kind == "landmarks" and engine.landmark_driven, kind
        return capture_signal(kind, (68, 2), batch)
    return capture_signal(kind, graph.input_shape, batch)


def measure_raw_fps(engine: Engine, seconds: float, *, batch: int = 1, kind: str = "image") -> float:
    """Frames per second of Engine.run alone at a fixed batch size, through the graph of driver ``kind``."""
    signal = _engine_signal(engine, kind, batch)
    avatar = np.zeros(batch, np.int64)
    runs = 0
    with PhaseProgress(seconds=seconds, description=f"raw engine, {kind}, batch {batch}") as progress:
        began = time.perf_counter()
        while (now := time.perf_counter()) - began < seconds:
            engine.run(signal, avatar, kind=kind)
            runs += 1
            progress.show(now - began)
    return runs * batch / (time.perf_counter() - began)


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of numerator / denominator, each pair measured within one round."""
    assert numerators and len(numerators) == len(denominators), (numerators, denominators)
    return float(np.median(np.array(numerators) / np.array(denominators)))


CAPTURE_TURN_S = 0.25  # each graph's turn within a round of the interleaved capture-cost phase


@dataclass(frozen=True)
class CaptureCosts:
    fps: dict[str, float]  # kind -> median over the rounds of its raw FPS at batch 1
    cost_vs_image: dict[str, float]  # kind -> median over the rounds of (base driver's FPS / its FPS) in the same round


def measure_capture_costs(engine: Engine, seconds: float, kinds: tuple[str, ...], *, base: str = "image") -> CaptureCosts:
    """Each capture graph's cost per frame beside the ``base`` driver's (the image graph's, or a landmark-driven model's
    landmarks), at batch 1: rounds in which the base and then each of ``kinds`` run for CAPTURE_TURN_S in turn; a
    round's ratio compares graphs timed seconds apart, so a box whose speed drifts between phases (these are shared)
    moves both sides of it alike."""
    if not kinds:
        return CaptureCosts(fps={}, cost_vs_image={})
    graphs = (base, *kinds)
    signals = {kind: _engine_signal(engine, kind, 1) for kind in graphs}
    avatar = np.zeros(1, np.int64)
    rounds: dict[str, list[float]] = {kind: [] for kind in graphs}
    for kind in graphs:  # one untimed run each: first-run allocations stay out of the rounds
        engine.run(signals[kind], avatar, kind=kind)
    with PhaseProgress(seconds=seconds, description=f"raw engine, {base} vs {' and '.join(kinds)}, interleaved") as progress:
        began = time.perf_counter()
        while not rounds[base] or time.perf_counter() - began < seconds:
            for kind in graphs:
                runs, turn_began = 0, time.perf_counter()
                while runs == 0 or time.perf_counter() - turn_began < CAPTURE_TURN_S:
                    engine.run(signals[kind], avatar, kind=kind)
                    runs += 1
                rounds[kind].append(runs / (time.perf_counter() - turn_began))
            progress.show(time.perf_counter() - began)
    return CaptureCosts(
        fps={kind: float(np.median(rounds[kind])) for kind in kinds},
        cost_vs_image={kind: median_ratio(rounds[base], rounds[kind]) for kind in kinds},
    )


@dataclass(frozen=True)
class WatermarkCost:
    fps_without: float  # live frames per second (engine, texture pixels, rgba8 encode) at batch 1, median of the rounds
    fps_with: float  # the same with the provenance watermark on each texture
    ratio: float  # median over the rounds of (with / without) in the same round; the target is >= 0.85
    unavailable: str | None = None


def measure_watermark_cost(engine: Engine, seconds: float) -> WatermarkCost:
    """The live frame rate at the model's resolution with and without the provenance watermark (server/provenance.py),
    interleaved as measure_capture_costs does: rounds in which each variant runs for CAPTURE_TURN_S in turn."""
    from server import imaging, provenance

    problem = provenance.unavailable_for(engine.resolution)
    if problem is not None:
        return WatermarkCost(fps_without=float("nan"), fps_with=float("nan"), ratio=float("nan"), unavailable=problem)
    kind = base_driver(engine)
    signal, avatar = _engine_signal(engine, kind, 1), np.zeros(1, np.int64)

    def live_frame(watermark: bool) -> None:
        output = engine.run(signal, avatar, kind=kind)
        texture = imaging.to_texture_pixels(output.rgb, output.alpha)[0]
        if watermark:
            texture = provenance.watermark_texture(texture, 0)
        imaging.encode_texture(texture, output_format="rgba8", size=engine.resolution)

    rounds: dict[bool, list[float]] = {False: [], True: []}
    live_frame(True)  # untimed: the library's first call loads it
    with PhaseProgress(seconds=seconds, description="live frame, with vs without the watermark, interleaved") as progress:
        began = time.perf_counter()
        while not rounds[True] or time.perf_counter() - began < seconds:
            for watermark in (False, True):
                runs, turn_began = 0, time.perf_counter()
                while runs == 0 or time.perf_counter() - turn_began < CAPTURE_TURN_S:
                    live_frame(watermark)
                    runs += 1
                rounds[watermark].append(runs / (time.perf_counter() - turn_began))
            progress.show(time.perf_counter() - began)
    without, with_ = rounds[False], rounds[True]
    return WatermarkCost(fps_without=float(np.median(without)), fps_with=float(np.median(with_)), ratio=median_ratio(with_, without))


def start_server(model_path: Path, *, threads: int = 0, options: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """A real `megalive serve` (with extra `options`) on an ephemeral loopback port; returns the process and its address."""
    command = [
        sys.executable,
        "-m",
        "megalive",
        "serve",
        "--model",
        str(model_path),
        "--bind",
        "tcp://127.0.0.1:*",
        "--threads",
        str(threads),
        *options,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r" on (tcp://\S+)", line.strip())
    if not match:
        process.kill()
        raise RuntimeError(f"server did not start: {line.strip()} {process.stderr.read().strip() if process.stderr else ''}")
    return process, match.group(1)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure_stream(
    address: str, *, sessions: int, seconds: float, window: int, resolution: tuple[int, int], driver: str = "image"
) -> StreamFigures:
    drivers = _driver_frames(resolution, driver=driver)
    with AvatarClient(address=address, max_in_flight=window, timeout_s=10.0, name="megalive-bench") as client:
        avatars = client.hello().models[0]["avatars"]
        handles = [client.open(avatar=i % avatars, driver=driver) for i in range(sessions)]
        engine_before = client.stats()["engine"]
        latencies: list[float] = []
        frames = dropped = sent = 0
        warm_up_s = min(1.0, seconds / 5)  # the first frames of a stream pay for setup; not counted
        warm_until = time.perf_counter() + warm_up_s
        began = None
        with PhaseProgress(seconds=seconds + warm_up_s, description=f"{sessions} session(s)") as progress:
            while True:
                now = time.perf_counter()
                if began is None and now >= warm_until:
                    began, frames, dropped, latencies = now, 0, 0, []
                    engine_before = client.stats()["engine"]
                if began is not None and now - began >= seconds:
                    break
                for handle in handles:
                    while client.can_send(handle):
                        client.send_frame(handle, drivers[sent % len(drivers)])
                        sent += 1
                for event in client.poll(timeout_ms=50):
                    if isinstance(event, Texture):
                        frames += 1
                        latencies.append(event.round_trip_ms)
                    else:
                        dropped += 1
                progress.show(now - warm_until + warm_up_s)
        elapsed = time.perf_counter() - began
        engine_after = client.stats()["engine"]
    return StreamFigures(
        sessions=sessions,
        frames=frames,
        seconds=elapsed,
        dropped=dropped,
        latencies_ms=tuple(latencies),
        engine_frames=engine_after["frames"] - engine_before["frames"],
        engine_runs=engine_after["runs"] - engine_before["runs"],
    )


@dataclass(frozen=True)
class SessionRounds:
    streams: tuple[StreamFigures, ...]  # per session count, its rounds combined
    ratios: dict[int, float]  # sessions -> median over the rounds of (its FPS / the first count's FPS in the same round)


def measure_session_rounds(
    address: str, *, counts: tuple[int, ...], rounds: int, seconds: float, window: int, resolution: tuple[int, int], driver: str
) -> SessionRounds:
    """Each session count streamed for ``seconds / rounds`` in turn, ``rounds`` times over (1, 2, 4, 1, 2, 4, …)."""
    phase_s = seconds / rounds
    return combine_session_rounds(
        [
            [measure_stream(address, sessions=n, seconds=phase_s, window=window, resolution=resolution, driver=driver) for n in counts]
            for _ in range(rounds)
        ]
    )


def combine_session_rounds(measured: list[list[StreamFigures]]) -> SessionRounds:
    """Rounds of phases (each round: one phase per session count, in the same order) into one figure per count and the
    median over the rounds of each count's FPS over the round's first phase's."""
    counts = [part.sessions for part in measured[0]]
    assert all([part.sessions for part in round_] == counts for round_ in measured), "every round streams the same counts"
    per_count = [[round_[i] for round_ in measured] for i in range(len(counts))]  # count -> its phases, one per round
    reference = [part.fps for part in per_count[0]]
    return SessionRounds(
        streams=tuple(StreamFigures.combined(parts) for parts in per_count),
        ratios={n: median_ratio([part.fps for part in parts], reference) for n, parts in zip(counts, per_count)},
    )


def measure_end_to_end_over_raw(
    engine: Engine, address: str, *, rounds: int, seconds: float, window: int, resolution: tuple[int, int], driver: str
) -> float:
    """Rounds of a turn of the engine alone at batch 1 (the served server idle: its threads do not spin) and a turn of
    one session streaming through the server, each ``seconds / rounds`` long; the median of the rounds' ratios."""
    turn_s = seconds / rounds
    raw, streamed = [], []
    for _ in range(rounds):
        raw.append(measure_raw_fps(engine, turn_s, kind=driver))
        streamed.append(measure_stream(address, sessions=1, seconds=turn_s, window=window, resolution=resolution, driver=driver).fps)
    return median_ratio(streamed, raw)


def run_bench(config: BenchConfig) -> BenchReport:
    providers = None if config.provider is None else providers_for(config.provider)  # ModelError (one line) when absent
    engine = Engine(
        model_path=config.model_path,
        providers=providers,
        intra_op_threads=config.threads,
        max_batch=4,
        spin_wait=config.spin_wait,
        lanes=config.lanes,
    )
    matmul_peak = measure_matmul_peak_gflops()
    base = base_driver(engine)
    raw_fps = measure_raw_fps(engine, config.seconds, kind=base)
    raw_batch4_fps = measure_raw_fps(engine, config.seconds, batch=4, kind=base)
    capture = measure_capture_costs(
        engine, config.seconds, tuple(kind for kind in engine.drivers if kind not in ("image", base)), base=base
    )
    watermark = measure_watermark_cost(engine, config.seconds)
    card, providers, lanes = engine.card, tuple(engine.providers), engine.lane_layout
    served_on = (
        (() if providers is None else ("--providers", ",".join(providers)))
        + (("--spin-wait",) if config.spin_wait else ())
        + (() if config.lanes is None else ("--lanes", str(config.lanes)))
    )
    process, address = start_server(config.model_path, threads=config.threads, options=served_on)
    try:
        end_to_end_over_raw = measure_end_to_end_over_raw(
            engine,
            address,
            rounds=config.session_rounds,
            seconds=config.seconds,
            window=config.window,
            resolution=card.resolution,
            driver=base,
        )
        del engine  # freed: the streams below get the cores to themselves
        sessions = measure_session_rounds(
            address,
            counts=config.session_counts,
            rounds=config.session_rounds,
            seconds=config.seconds,
            window=config.window,
            resolution=card.resolution,
            driver=base,
        )
    finally:
        stop_server(process)
    return BenchReport(
        machine=machine_description(),
        model=card.name,
        resolution=card.resolution,
        providers=providers,
        raw_fps=raw_fps,
        raw_batch4_fps=raw_batch4_fps,
        capture_raw_fps=capture.fps,
        capture_cost_vs_image=capture.cost_vs_image,
        gflops_per_frame=card.gflops_per_frame,
        matmul_peak_gflops=matmul_peak,
        streams=sessions.streams,
        session_ratios=sessions.ratios,
        session_rounds=config.session_rounds,
        end_to_end_over_raw=end_to_end_over_raw,
        watermark=watermark,
        base_driver=base,
        spin_wait=config.spin_wait,
        lanes=lanes.lanes,
        threads_per_lane=lanes.threads_per_lane,
    )
