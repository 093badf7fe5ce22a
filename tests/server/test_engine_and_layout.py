"""Engine contract checks, the runtime's independence from torch, and the CLIs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megalive.cli import main as megalive_main
from models.contract_model import ContractModel, ContractModelConfig
from models.export import export_avatar_model
from server.bench import StreamFigures, combine_session_rounds, median_ratio
from server.engine import Engine, LaneLayout, ModelError, batch_candidates, best_batch, lane_layout, load_model_card

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_import_server_does_not_load_torch_or_models() -> None:
    probe = (
        "import sys, server, client.protocol, client.client, server.engine, server.service, server.imaging, server.one_euro, "
        "server.bench, server.cli; bad = [m for m in ('torch', 'models') if m in sys.modules]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_protocol_and_client_need_only_msgpack_and_zmq() -> None:
    """The copies shipped to Blender and Unreal must work without numpy."""
    probe = (
        "import sys; sys.modules['numpy'] = None; import client.protocol, client.client; "
        "m = client.protocol.decode(client.protocol.encode({'op': 'hello', 'id': 1})); print(m.op)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "hello", result.stderr


def test_engine_batches_and_splits_above_max_batch(contract_model_path: Path) -> None:
    engine = Engine(model_path=contract_model_path, max_batch=2)
    driver = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    avatars = np.array([0, 1, 2, 0, 1])
    output = engine.run(driver, avatars)
    assert output.rgb.shape == (5, 3, 32, 32) and output.alpha.shape == (5, 1, 32, 32)
    assert engine.counters.runs == 3 and engine.counters.frames == 5
    single = engine.run(driver[3:4], avatars[3:4])
    np.testing.assert_allclose(single.rgb[0], output.rgb[3], atol=1e-5)
    with pytest.raises(ValueError):
        engine.run(np.zeros((1, 3, 16, 16), np.float32), np.zeros(1, np.int64))


def test_lanes_share_the_cores_out_and_never_exceed_the_batch() -> None:
    assert lane_layout(requested=None, cores=2, max_batch=8) == LaneLayout(lanes=2, threads_per_lane=1)
    assert lane_layout(requested=None, cores=16, max_batch=8) == LaneLayout(lanes=8, threads_per_lane=2)
    assert lane_layout(requested=None, cores=2, max_batch=1) == LaneLayout(lanes=1, threads_per_lane=2)  # a chunk of 1: no split
    assert lane_layout(requested=1, cores=8, max_batch=8) == LaneLayout(lanes=1, threads_per_lane=8)
    assert lane_layout(requested=4, cores=2, max_batch=8) == LaneLayout(lanes=2, threads_per_lane=1)  # a lane has a core
    assert lane_layout(requested=3, cores=8, max_batch=8) == LaneLayout(lanes=3, threads_per_lane=2)
    with pytest.raises(ValueError, match="lanes must be 1 or more"):
        lane_layout(requested=0, cores=2, max_batch=8)


class FailingGraph:
    """A lane's main graph that fails, as ONNX Runtime does on a bad run."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        raise RuntimeError("lane graph failed")


def test_lanes_give_the_one_sessions_frames_in_the_batchs_order(multi_driver_model_path: Path) -> None:
    """A batch split across two lanes (two one-thread sessions side by side) gives what one session gives, frame for
    frame in order, on every driver kind; a lane that fails fails the call once every lane has finished, and the next
    call runs."""
    # intra_op_threads 2: two lanes of one thread whatever this machine's cores.
    split = Engine(model_path=multi_driver_model_path, max_batch=4, intra_op_threads=2, lanes=2)
    whole = Engine(model_path=multi_driver_model_path, max_batch=4, intra_op_threads=2, lanes=1)
    assert split.lane_layout == LaneLayout(lanes=2, threads_per_lane=1) and whole.lane_layout.lanes == 1
    assert split.session.get_session_options().intra_op_num_threads == 2  # a single frame: all the threads
    generator = np.random.default_rng(0)
    for batch in (1, 2, 3, 4, 7):  # 7: chunks of 4 and 3, each split in two
        driver = generator.random((batch, 3, 64, 64), dtype=np.float32)
        avatars = generator.integers(0, 3, batch)
        got, want = split.run(driver, avatars), whole.run(driver, avatars)
        np.testing.assert_allclose(got.rgb, want.rgb, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.alpha, want.alpha, rtol=0, atol=1e-5)
    assert split.counters.runs == whole.counters.runs == 6 and split.counters.frames == 17  # a chunk is one run, split or not
    frames = generator.random((3, 3, 64, 64), dtype=np.float32)
    one_by_one = np.concatenate([whole.run(frames[i : i + 1], np.array([i])).rgb for i in range(3)])
    np.testing.assert_allclose(split.run(frames, np.arange(3)).rgb, one_by_one, rtol=0, atol=1e-5)  # the batch's order
    for kind, shape in (("arkit", (61,)), ("landmarks", (68, 2))):
        signal = generator.random((3, *shape), dtype=np.float32)
        np.testing.assert_allclose(
            split.run(signal, np.array([2, 0, 1]), kind=kind).rgb, whole.run(signal, np.array([2, 0, 1]), kind=kind).rgb, atol=1e-5
        )
    lane_graph, lane_signals = split._lanes[1]
    failing = FailingGraph()
    split._lanes[1] = (failing, lane_signals)
    with pytest.raises(RuntimeError, match="lane graph failed"):
        split.run(driver[:2], avatars[:2])
    assert failing.calls == 1
    split._lanes[1] = (lane_graph, lane_signals)
    np.testing.assert_allclose(split.run(driver[:2], avatars[:2]).rgb, whole.run(driver[:2], avatars[:2]).rgb, atol=1e-5)


def test_the_server_takes_the_smallest_batch_within_the_tolerance_of_the_best(contract_model_path: Path) -> None:
    """`serve --max-batch auto`: every candidate measured; the smallest batch within the tolerance of the best frames/s
    (more sessions than the batch drop nothing; a tie adds latency and is often a loss), never a slower one."""
    assert batch_candidates(8) == (1, 2, 4, 8) and batch_candidates(6) == (1, 2, 4, 6) and batch_candidates(1) == (1,)
    assert best_batch({1: 55.0, 2: 54.0, 4: 53.0}) == 1  # batching within 5 % of batch 1: not worth its latency
    assert best_batch({1: 55.0, 2: 50.0, 4: 42.0}) == 1
    assert best_batch({1: 40.0, 2: 55.0, 4: 56.0, 8: 53.5}) == 2  # 2 is within 5 % of the best (4)
    assert best_batch({1: 40.0, 2: 45.0, 4: 60.0, 8: 59.0}) == 4  # the best, and 8 only ties it
    with pytest.raises(ValueError, match="no batch"):
        best_batch({})
    engine = Engine(model_path=contract_model_path, max_batch=4)
    measured = engine.frames_per_second_by_batch((1, 2, 4), seconds=0.3)
    assert sorted(measured) == [1, 2, 4] and all(rate > 0 for rate in measured.values())
    assert engine.counters.runs == 0  # the measuring runs are not the server's frames


def test_model_card_errors_are_one_line(contract_model_path: Path, tmp_path: Path) -> None:
    card = load_model_card(contract_model_path)
    assert card.avatar_names == ("ada", "bo", "cy") and card.resolution == (32, 32) and card.drivers == ("image",)
    with pytest.raises(ModelError, match="not found"):
        load_model_card(tmp_path / "missing.onnx")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(contract_model_path.read_bytes())
    with pytest.raises(ModelError, match="sidecar not found"):
        load_model_card(lonely)
    lonely.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        load_model_card(lonely)
    sidecar = json.loads(contract_model_path.with_suffix(".json").read_text())
    lonely.with_suffix(".json").write_text(json.dumps({**sidecar, "avatars": []}))
    with pytest.raises(ModelError, match="no avatars"):
        load_model_card(lonely)


def test_engine_refuses_a_model_whose_sidecar_disagrees(tmp_path: Path) -> None:
    path = tmp_path / "wrong.onnx"
    export_avatar_model(
        ContractModel(config=ContractModelConfig(resolution=16, num_avatars=1, width=4)),
        out_path=path,
        resolution=(16, 16),
        avatar_names=["a"],
        command="test",
        config={},
    )
    sidecar = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**sidecar, "resolution": [24, 24]}))
    with pytest.raises(ModelError, match="disagrees"):
        Engine(model_path=path)


def test_export_writes_the_sidecar_and_leaves_no_temporary_files(contract_model_path: Path) -> None:
    sidecar = json.loads(contract_model_path.with_suffix(".json").read_text())
    assert sidecar["opset"] == 20 and sidecar["parity_max_abs_error"] < 1e-4 and sidecar["command"]
    assert sorted(p.suffix for p in contract_model_path.parent.iterdir()) == [".json", ".onnx"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def test_cli_help_and_version() -> None:
    for module in ("megalive", "models.cli"):
        assert run_cli(module, "--help").returncode == 0
        assert "megalive" in run_cli(module, "--version").stdout
    assert "--model" in run_cli("megalive", "serve", "--help").stdout


def test_the_installed_commands_run_outside_the_repository(tmp_path: Path) -> None:
    # Console scripts do not put the working folder on sys.path: every package they import must be installed
    # (pyproject's package list), which running them from the repository root would hide.
    for script in ("megalive", "megalive-train"):
        result = subprocess.run(
            [str(Path(sys.executable).parent / script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert result.returncode == 0, result.stderr


def test_contract_model_command_and_bench_print_a_table(tmp_path: Path) -> None:
    model = tmp_path / "bench.onnx"
    made = run_cli("models.cli", "contract-model", "--out", str(model), "--resolution", "32", "--avatars", "4", "--width", "8")
    assert made.returncode == 0 and "max abs error" in made.stdout, made.stderr
    assert json.loads(model.with_suffix(".json").read_text())["command"].endswith("--width 8")
    figures = tmp_path / "bench.json"
    bench = run_cli("megalive", "bench", "--model", str(model), "--seconds", "0.5", "--session-rounds", "2", "--json", str(figures))
    assert bench.returncode == 0, bench.stderr
    for row in ("raw engine FPS", "end-to-end / raw", "p99 / p50", "4 session(s)", "median of 2 interleaved rounds"):
        assert row in bench.stdout
    report = json.loads(figures.read_text())
    assert report["raw_engine_fps"] > 0 and report["throughput"]["4"]["fps"] > 0
    assert report["session_rounds"] == 2 and report["throughput"]["1"]["vs_1"] == 1.0
    assert report["lanes"] >= 1 and ("no lanes" in bench.stdout) == (report["lanes"] == 1)
    refused = run_cli("megalive", "bench", "--model", str(model), "--session-rounds", "0")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "megalive bench: --session-rounds must be between 1 and 100, got 0"
    ]
    refused = run_cli("megalive", "bench", "--model", str(model), "--lanes", "0")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == ["megalive bench: --lanes must be between 1 and 64, got 0"]
    bad = run_cli("models.cli", "contract-model", "--out", str(tmp_path / "x.onnx"), "--resolution", "30")
    assert bad.returncode == 2 and "multiple of 4" in bad.stderr


def phase(sessions: int, fps: float, *, seconds: float = 2.0) -> StreamFigures:
    frames = round(fps * seconds)
    return StreamFigures(
        sessions=sessions,
        frames=frames,
        seconds=seconds,
        dropped=0,
        latencies_ms=(10.0,),
        engine_frames=frames,
        engine_runs=frames // sessions,
    )


def test_session_ratios_compare_phases_within_a_round_so_drift_between_rounds_stays_out() -> None:
    # A box that halves its speed between rounds: 4 sessions get exactly what one gets within each round, but the
    # second round's 4-session phase is slower than the first round's single session.
    measured = [[phase(1, 100.0), phase(4, 100.0)], [phase(1, 50.0), phase(4, 50.0)], [phase(1, 80.0), phase(4, 88.0)]]
    rounds = combine_session_rounds(measured)
    assert rounds.ratios == {1: 1.0, 4: 1.0}  # the median of 1.0, 1.0 and 1.1
    single, four = rounds.streams
    assert (single.sessions, single.frames, single.seconds) == (1, 460, 6.0)
    assert (four.sessions, four.frames, four.mean_batch) == (4, 476, 476 / (200 // 4 + 100 // 4 + 176 // 4))
    assert len(four.latencies_ms) == 3
    with pytest.raises(AssertionError, match="same counts"):
        combine_session_rounds([[phase(1, 10.0), phase(4, 10.0)], [phase(4, 10.0), phase(1, 10.0)]])


def test_end_to_end_over_raw_compares_turns_within_a_round() -> None:
    # The box halves its speed after the first round: each round's stream gets 90 % of that round's engine, while the
    # ratio of the phases' means (the stream measured after the engine, on the slower box) would read far lower.
    raw, streamed = [100.0, 50.0, 50.0], [90.0, 45.0, 45.0]
    assert median_ratio(streamed, raw) == pytest.approx(0.9)
    assert median_ratio([90.0, 30.0, 46.0], [100.0, 50.0, 50.0]) == pytest.approx(0.9)  # the median: one odd round stays out
    with pytest.raises(AssertionError):
        median_ratio([1.0], [1.0, 2.0])


def test_bench_times_each_capture_driver_beside_the_image_path(multi_driver_model_path: Path, tmp_path: Path) -> None:
    figures = tmp_path / "bench.json"
    bench = run_cli("megalive", "bench", "--model", str(multi_driver_model_path), "--seconds", "0.3", "--json", str(figures))
    assert bench.returncode == 0, bench.stderr
    assert "arkit driver" in bench.stdout and "landmarks driver" in bench.stdout
    report = json.loads(figures.read_text())
    assert set(report["capture_raw_fps"]) == {"arkit", "landmarks"} and all(fps > 0 for fps in report["capture_raw_fps"].values())
    # Interleaved turns: a ratio per round of the two graphs timed back to back, not the ratio of two phases' FPS.
    assert set(report["capture_cost_vs_image"]) == {"arkit", "landmarks"}
    assert all(0 < ratio < float("inf") for ratio in report["capture_cost_vs_image"].values())


def test_live_controller_needs_only_the_stdlib_zmq_and_its_siblings() -> None:
    """client/live.py ships beside protocol.py and client.py: no numpy, torch or models may come with it."""
    probe = (
        "import sys; sys.modules['numpy'] = None; import client.live; "
        "bad = [m for m in ('torch', 'models', 'numpy') if sys.modules.get(m) is not None]; "
        "print(client.live.LiveController.__name__, bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "LiveController []", result.stdout + result.stderr


def test_a_corrupt_model_file_is_a_one_line_model_error(contract_model_path: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    sidecar = json.loads(contract_model_path.with_suffix(".json").read_text())
    corrupt.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match="re-run megalive-train export") as refused:  # the digest catches it first
        Engine(model_path=corrupt)
    del sidecar["model_sha256"]  # an older sidecar: no digest, so ONNX Runtime is the one to refuse
    corrupt.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match="cannot load") as raised:
        Engine(model_path=corrupt)
    assert "\n" not in str(raised.value) and "\n" not in str(refused.value)


def test_a_sidecar_without_digests_still_loads(multi_driver_model_path: Path, tmp_path: Path) -> None:
    """Sidecars written before graph digests (the models shipped until 2026-11-30) keep loading as they are."""
    for path in multi_driver_model_path.parent.iterdir():
        shutil.copy(path, tmp_path / path.name)
    sidecar_path = (tmp_path / multi_driver_model_path.name).with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text())
    del sidecar["model_sha256"]
    for entry in sidecar["adapters"].values():
        del entry["model_sha256"]
    sidecar_path.write_text(json.dumps(sidecar))
    card = load_model_card(tmp_path / multi_driver_model_path.name)
    assert card.drivers == ("image", "arkit", "landmarks") and len(card.adapters) == 2


def test_onnx_runtime_threads_spin_only_when_asked(contract_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ONNX Runtime's threads busy-wait between operators by default; the engine turns that off unless told (`serve
    --spin-wait`, `bench --spin-wait`): spinning threads take the cores the server's other threads and clients need."""
    for spin_wait, expected in ((False, "0"), (True, "1")):
        engine = Engine(model_path=contract_model_path, spin_wait=spin_wait, warmup=False)
        assert engine.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == expected
    for options, shown in (((), False), (("--spin-wait",), True)):
        assert megalive_main(["serve", "--model", str(contract_model_path), "--dry-run", *options]) == 0
        assert json.loads(capsys.readouterr().out)["spin_wait"] is shown
    assert megalive_main(["serve", "--model", str(contract_model_path), "--engine", "triton://127.0.0.1:8001", "--spin-wait"]) == 2
    assert "--spin-wait are the in-process engine's" in capsys.readouterr().err


def test_serve_takes_lanes_auto_or_a_number_in_range(contract_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for options, shown in (((), "auto"), (("--lanes", "3"), 3)):
        assert megalive_main(["serve", "--model", str(contract_model_path), "--dry-run", *options]) == 0
        assert json.loads(capsys.readouterr().out)["lanes"] == shown
    assert megalive_main(["serve", "--model", str(contract_model_path), "--lanes", "0"]) == 2
    assert capsys.readouterr().err.strip() == "megalive serve: --lanes must be between 1 and 64"
    assert megalive_main(["serve", "--model", str(contract_model_path), "--engine", "triton://127.0.0.1:8001", "--lanes", "2"]) == 2
    assert "--lanes and --spin-wait are the in-process engine's" in capsys.readouterr().err
