"""`megalive export-triton` and `megalive serve --engine triton://`: the repository read back with Triton's own model
config schema, and the engine against a real tritonserver (the one nvidia-pytriton bundles, on the CPU, serving the
exported repository through its python backend: tests/server/triton_stand_in.py)."""

from __future__ import annotations

import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client.client import AvatarClient, FrameError, Texture
from contract.model_card import read_model_card
from megalive.cli import main as megalive_main
from server.engine import Engine, ModelError
from server.triton_engine import TritonAddress, TritonEngine, parse_engine_address
from tests.server.triton_stand_in import CpuTriton, stand_in_repository, start_cpu_triton

REPO_ROOT = Path(__file__).resolve().parents[2]
needs_bundled_triton = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="nvidia-pytriton bundles tritonserver for Linux x86_64 only",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_configs(repository: Path) -> dict:
    """Every config.pbtxt of a repository parsed with Triton's ModelConfig schema (an unknown field or enum fails)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return {
        folder.name: text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        for folder in sorted(repository.iterdir())
    }


def export(model: Path, out: Path, *options: str) -> Path:
    assert megalive_main(["export-triton", "--model", str(model), "--out", str(out), *options]) == 0
    return out


def test_export_triton_writes_the_cards_graphs_as_a_triton_repository(enrollable_model_path: Path, tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    out = export(enrollable_model_path, tmp_path / "triton", "--max-batch", "4", "--gpus", "0,1", "--tensorrt", "fp16")
    card = read_model_card(enrollable_model_path)
    assert card.enrollment is not None
    identity = list(card.enrollment.identity_shape)
    configs = model_configs(out / "repository")
    assert sorted(configs) == ["enrollable", "enrollable_arkit", "enrollable_embedder"]
    graphs = {
        "enrollable": card.model_path,
        "enrollable_arkit": card.adapters[0].model_path,
        "enrollable_embedder": card.enrollment.embedder_path,
    }
    for name, config in configs.items():
        copied = out / "repository" / name / "1" / "model.onnx"
        assert config.name == name and config.backend == "onnxruntime" and config.default_model_filename == "model.onnx"
        assert copied.read_bytes() == graphs[name].read_bytes()
        assert config.parameters["megalive_sha256"].string_value == sha256(copied)
        (group,) = config.instance_group
        assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 1 and list(group.gpus) == [0, 1]

    def tensors(entries) -> dict:
        return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in entries}

    main = configs["enrollable"]
    assert main.max_batch_size == 4 and main.HasField("dynamic_batching")
    assert main.dynamic_batching.max_queue_delay_microseconds == 500
    assert tensors(main.input) == {"driver": ("TYPE_FP32", [3, 64, 64]), "identity": ("TYPE_FP32", identity)}
    assert tensors(main.output) == {"rgb": ("TYPE_FP32", [3, 64, 64]), "alpha": ("TYPE_FP32", [1, 64, 64])}
    (accelerator,) = main.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}
    arkit = configs["enrollable_arkit"]
    assert tensors(arkit.input) == {"curves": ("TYPE_FP32", [61]), "identity": ("TYPE_FP32", identity)}
    assert arkit.HasField("dynamic_batching")
    embedder = configs["enrollable_embedder"]  # one person's K portraits per request: no batching across requests
    assert embedder.max_batch_size == 1 and not embedder.HasField("dynamic_batching") and not embedder.HasField("optimization")
    assert tensors(embedder.input) == {"frames": ("TYPE_FP32", [-1, 3, 64, 64])}
    assert tensors(embedder.output) == {"identity": ("TYPE_FP32", identity)}
    # The card beside the repository: every file it names, the avatar bank among them, and it reads back whole.
    copy = read_model_card(out / "model" / "enrollable.onnx")
    assert copy.enrollment is not None and copy.avatar_names == card.avatar_names
    assert copy.enrollment.bank_path.read_bytes() == card.enrollment.bank_path.read_bytes()


def test_export_triton_reshapes_a_v1_avatar_index_and_places_cpu_instances(contract_model_path: Path, tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    out = export(contract_model_path, tmp_path / "triton", "--kind", "cpu", "--instances", "2", "--queue-delay-us", "0")
    (config,) = model_configs(out / "repository").values()
    avatar = next(t for t in config.input if t.name == "avatar")
    assert model_config_pb2.DataType.Name(avatar.data_type) == "TYPE_INT64"
    assert list(avatar.dims) == [1] and avatar.HasField("reshape") and list(avatar.reshape.shape) == []
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU and group.count == 2 and not group.gpus
    assert config.dynamic_batching.max_queue_delay_microseconds == 0


def test_export_triton_refuses_in_one_line_and_dry_runs(contract_model_path: Path, tmp_path: Path, capsys) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    for options in (
        ["--out", str(taken)],
        ["--out", str(tmp_path / "a"), "--kind", "cpu", "--gpus", "0"],
        ["--out", str(tmp_path / "b"), "--gpus", "zero"],
        ["--out", str(tmp_path / "c"), "--max-batch", "0"],
        ["--out", str(tmp_path / "d"), "--model", str(tmp_path / "missing.onnx")],
    ):
        assert megalive_main(["export-triton", "--model", str(contract_model_path), *options]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("megalive export-triton: ") and "\n" not in error, error
    assert megalive_main(["export-triton", "--model", str(contract_model_path), "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert 'backend: "onnxruntime"' in capsys.readouterr().out and not (tmp_path / "dry").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing half-written anywhere


@pytest.mark.parametrize(
    "text",
    ["triton://gpu-node", "http://gpu-node:8001", "triton://:8001", "triton://gpu-node:port", "triton://gpu-node:8001/a/b"],
)
def test_engine_addresses_are_checked(text: str) -> None:
    with pytest.raises(ValueError, match="triton://HOST:PORT|one Triton model name"):
        parse_engine_address(text)


def test_engine_addresses_parse() -> None:
    assert parse_engine_address("triton://gpu-node:8001") == TritonAddress(host="gpu-node", port=8001)
    assert parse_engine_address("triton://10.0.0.7:9001/studio") == TritonAddress(host="10.0.0.7", port=9001, model="studio")


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, enrollable_model_path: Path, contract_model_path: Path
) -> Iterator[tuple[CpuTriton, Path, Path]]:
    """One CPU Triton serving the v2 enrollable model's and the v1 contract model's exports; yields it and the cards
    beside the two repositories (what `megalive serve --model` reads)."""
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        pytest.skip("nvidia-pytriton bundles tritonserver for Linux x86_64 only")
    work = tmp_path_factory.mktemp("triton")
    v2 = export(enrollable_model_path, work / "v2", "--kind", "cpu", "--max-batch", "4")
    v1 = export(contract_model_path, work / "v1", "--kind", "cpu", "--max-batch", "4")
    repository = stand_in_repository([v2 / "repository", v1 / "repository"], work / "served")
    triton = start_cpu_triton(repository, work)
    try:
        yield triton, v2 / "model" / "enrollable.onnx", v1 / "model" / "contract.onnx"
    finally:
        triton.stop()


@needs_bundled_triton
def test_the_triton_engine_gives_the_in_process_engines_outputs(served: tuple[CpuTriton, Path, Path], tmp_path: Path) -> None:
    triton, v2_model, v1_model = served
    address = parse_engine_address(f"triton://{triton.url}")
    generator = np.random.default_rng(0)
    for model in (v2_model, v1_model):
        remote = TritonEngine(model_path=model, address=address, max_batch=4, bank_path=tmp_path / f"{model.stem}.npz")
        local = Engine(model_path=model, max_batch=4, bank_path=tmp_path / f"{model.stem}.local.npz")
        assert remote.avatar_names == local.avatar_names and remote.drivers == local.drivers
        assert remote.providers == [f"triton://{triton.url}/{model.stem}"]
        assert remote.lane_layout.lanes == 1  # Triton batches on its own side: no lanes in this process
        for batch in (1, 3, 6):  # 6: two chunks of at most max_batch
            driver = generator.random((batch, 3, *local.resolution), dtype=np.float32)
            avatars = generator.integers(0, local.num_avatars, batch)
            got, want = remote.run(driver, avatars), local.run(driver, avatars)
            np.testing.assert_allclose(got.rgb, want.rgb, rtol=0, atol=1e-5)
            np.testing.assert_allclose(got.alpha, want.alpha, rtol=0, atol=1e-5)
        assert remote.counters.frames == 10 and remote.counters.runs == 4
    v2 = TritonEngine(model_path=v2_model, address=address, max_batch=4)
    local = Engine(model_path=v2_model, max_batch=4)
    curves = generator.random((2, 61), dtype=np.float32)
    np.testing.assert_allclose(
        v2.run(curves, np.array([2, 0]), kind="arkit").rgb, local.run(curves, np.array([2, 0]), kind="arkit").rgb, atol=1e-5
    )
    portraits = generator.random((2, 3, *local.resolution), dtype=np.float32)
    np.testing.assert_allclose(v2.embed(portraits), local.embed(portraits), rtol=0, atol=1e-5)


@needs_bundled_triton
def test_the_triton_engine_refuses_graphs_that_are_not_its_cards(served: tuple[CpuTriton, Path, Path]) -> None:
    triton, v2_model, _ = served
    with pytest.raises(ModelError, match="SHA-256"):  # Triton's "contract" is another model's graph
        TritonEngine(model_path=v2_model, address=parse_engine_address(f"triton://{triton.url}/contract"))
    with pytest.raises(ModelError, match="batches at most 4"):
        TritonEngine(model_path=v2_model, address=parse_engine_address(f"triton://{triton.url}"), max_batch=8)
    with pytest.raises(ModelError, match="'elsewhere'"):
        TritonEngine(model_path=v2_model, address=parse_engine_address(f"triton://{triton.url}/elsewhere"))


def start_serve(model: Path, *options: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "megalive", "serve", "--model", str(model), "--bind", "tcp://127.0.0.1:*", "--no-enroll", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if " on tcp://" not in line:
        process.kill()
        raise AssertionError(f"serve did not start: {line} {process.communicate(timeout=30)[1]}")
    return process, line.strip().rsplit(" on ", 1)[1]


def stop_serve(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def render(client: AvatarClient, session: int, frame: np.ndarray, *, timeout_s: float = 30.0) -> Texture | FrameError:
    """Send one frame and wait for its reply (a texture or an error); fails the test if none comes in time."""
    seq = client.send_frame(session, frame)
    assert seq is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in client.poll(timeout_ms=50):
            if isinstance(event, (Texture, FrameError)) and event.seq == seq:
                return event
    raise AssertionError(f"no reply to frame {seq} within {timeout_s} s: the server hung")


@needs_bundled_triton
def test_serve_with_triton_streams_the_in_process_servers_textures(served: tuple[CpuTriton, Path, Path]) -> None:
    triton, v2_model, _ = served
    generator = np.random.default_rng(1)
    pictures = [generator.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    curves = [generator.random(61, dtype=np.float32) for _ in range(2)]
    textures: dict[str, list[np.ndarray]] = {}
    for engine in ("onnxruntime", f"triton://{triton.url}"):
        process, address = start_serve(v2_model, "--engine", engine, "--max-batch", "4")
        try:
            with AvatarClient(address=address, timeout_s=30) as client:
                assert client.hello().models[0]["providers"][0].startswith("triton://" if engine != "onnxruntime" else "CPU")
                # No One-Euro filter on the curves: it smooths by the frames' timestamps, which differ between the runs.
                sessions = [client.open(avatar=1), client.open(avatar=2, driver="arkit", stabilise=False)]
                replies = [render(client, sessions[0], p) for p in pictures] + [render(client, sessions[1], c) for c in curves]
        finally:
            stop_serve(process)
        assert all(isinstance(reply, Texture) for reply in replies), replies
        textures[engine] = [np.array(reply.buffer.array()) for reply in replies if isinstance(reply, Texture)]
    for remote, local in zip(textures[f"triton://{triton.url}"], textures["onnxruntime"]):
        assert remote.shape == local.shape == (64, 64, 4)
        np.testing.assert_array_equal(remote, local)  # the same graph on the same floats: the same texture, watermark and all


@needs_bundled_triton
def test_a_triton_that_hangs_or_goes_away_fails_frames_not_the_server_and_comes_back(contract_model_path: Path, tmp_path: Path) -> None:
    out = export(contract_model_path, tmp_path / "v1", "--kind", "cpu", "--max-batch", "4")
    repository = stand_in_repository([out / "repository"], tmp_path / "served")
    triton = start_cpu_triton(repository, tmp_path)
    process = None
    try:
        process, address = start_serve(
            out / "model" / "contract.onnx", "--engine", f"triton://{triton.url}", "--engine-timeout", "3", "--max-batch", "4"
        )
        frame = np.full((32, 32, 3), 128, np.uint8)
        with AvatarClient(address=address, timeout_s=10) as client:
            session = client.open(avatar=1)
            assert isinstance(render(client, session, frame), Texture)
            os.kill(triton.process.pid, signal.SIGSTOP)  # Triton hangs: connected, never answering
            try:
                reply = render(client, session, frame)
                assert isinstance(reply, FrameError) and "DEADLINE_EXCEEDED" in reply.message, reply  # --engine-timeout
            finally:
                os.kill(triton.process.pid, signal.SIGCONT)
            replies = [render(client, session, frame) for _ in range(3)]  # what was queued in Triton meanwhile drains
            assert isinstance(replies[-1], Texture), replies
            triton.stop()  # mid-stream: Triton shuts down and its port closes
            for _ in range(3):  # each frame answered (render fails on a reply that does not come): an error, not a hang
                reply = render(client, session, frame, timeout_s=30)
                assert isinstance(reply, FrameError) and reply.code == "internal" and "Triton" in reply.message, reply
            assert client.stats()["engine"]["alive"]  # the server itself answers
            triton = start_cpu_triton(repository, tmp_path, grpc_port=triton.grpc_port)  # Triton is back on its port
            deadline = time.monotonic() + 60
            while not isinstance(reply := render(client, session, frame), Texture):
                assert time.monotonic() < deadline, f"frames still fail after Triton came back: {reply}"
                time.sleep(0.5)
    finally:
        if process is not None:
            stop_serve(process)
        triton.stop()


def test_serve_refuses_a_triton_it_cannot_use_in_one_line(contract_model_path: Path) -> None:
    def serve(*options: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "megalive", "serve", "--model", str(contract_model_path), "--bind", "tcp://127.0.0.1:*"]
        return subprocess.run([*command, *options], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_port = silent.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]  # bound, never listening: connections are refused
            cases = [
                ("cannot reach Triton", ("--engine", f"triton://127.0.0.1:{closed_port}", "--engine-timeout", "2")),
                ("cannot reach Triton", ("--engine", f"triton://127.0.0.1:{silent_port}", "--engine-timeout", "2")),
                ("expected triton://HOST:PORT", ("--engine", "grpc://127.0.0.1:8001")),
                ("in-process engine's", ("--engine", f"triton://127.0.0.1:{closed_port}", "--providers", "CPUExecutionProvider")),
            ]
            for words, options in cases:  # the silent one ends at --engine-timeout (serve's timeout above guards a hang)
                result = serve(*options)
                error = result.stderr.strip()
                assert result.returncode == 2 and error.startswith("megalive serve: ") and "\n" not in error, result.stderr
                assert words in error, error
    dry = serve("--engine", "triton://gpu-node:8001/studio", "--dry-run")
    assert dry.returncode == 0 and '"engine": "triton://gpu-node:8001/studio"' in dry.stdout
