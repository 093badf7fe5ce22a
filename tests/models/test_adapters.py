"""Driver adapters: the student's driving code from ARKit curves or landmarks; training, export, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoints import adapter_from_checkpoint, load_checkpoint, student_from_checkpoint
from models.data.heads import SyntheticHeads, neutral_motion, sample_identities
from models.data.paired import PairedSignals
from models.megaportraits.adapters import ADAPTER_KINDS, AdaptedStudent, DriverAdapter, adapter_config, arkit_features, landmark_features
from models.megaportraits.student import Student, student_config
from models.training.train_adapter import AdapterTrainConfig, adapter_features, train_adapter
from models.training.train_student import student_losses

REPO_ROOT = Path(__file__).resolve().parents[2]


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


@pytest.mark.parametrize("preset", ["tiny", "cpu256"])
@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_adapter_pyramid_matches_the_encoders(preset: str, kind: str) -> None:
    student = Student(config=student_config(preset, num_avatars=2))
    adapter = DriverAdapter(config=adapter_config(kind, student=student.config))
    resolution = student.config.resolution
    with torch.no_grad():
        code = adapter(torch.rand(2, adapter.config.in_features))
        encoded = student.encoder(torch.rand(2, 3, resolution, resolution))
    assert [tuple(level.shape) for level in code] == [tuple(level.shape) for level in encoded]
    assert all(float(level.min()) >= 0 for level in code)  # post-ReLU, like the encoder's


def test_adapted_student_reads_wire_signals() -> None:
    torch.manual_seed(0)
    student = Student(config=student_config("tiny", num_avatars=2)).eval()
    for kind, signal in (("arkit", torch.rand(3, 61)), ("landmarks", torch.rand(3, 68, 2))):
        model = AdaptedStudent(student=student, adapter=DriverAdapter(config=adapter_config(kind, student=student.config))).eval()
        with torch.no_grad():
            out = model(signal, torch.tensor([0, 1, 0]))
        assert out.rgb.shape == (3, 3, 64, 64) and out.alpha.shape == (3, 1, 64, 64)
    # The six eye rotations are not used (gaze is in the eyeLook* blendshapes); head angles are.
    curves = torch.rand(1, 61)
    moved_eyes, moved_head = curves.clone(), curves.clone()
    moved_eyes[:, 55:] += 0.3
    moved_head[:, 52] += 0.3
    assert torch.equal(arkit_features(curves), arkit_features(moved_eyes))
    assert not torch.equal(arkit_features(curves), arkit_features(moved_head))
    assert landmark_features(torch.full((1, 68, 2), 0.5)).abs().max() == 0  # centred on the crop


def test_signal_pairs_are_the_renderers_exact_motion(tiny_dataset: Path) -> None:
    data = PairedSignals(root=tiny_dataset)
    pair = data[4]
    assert pair.curves.shape == (61,) and pair.framing.shape == (3,) and pair.landmarks.shape == (68, 2)
    motions = np.load(tiny_dataset / "motions.npz")
    np.testing.assert_allclose(pair.curves[:52].numpy(), motions["expression"][4], atol=1e-6)
    np.testing.assert_allclose(pair.curves[52:55].numpy(), [motions["yaw"][4], motions["pitch"][4], motions["roll"][4]], atol=1e-6)
    landmarks_px = np.load(tiny_dataset / "driver_landmarks.npy")[4]
    np.testing.assert_allclose(pair.landmarks.numpy() * 64, landmarks_px, atol=1e-4)


@pytest.fixture(scope="module")
def adapter_runs(tiny_run: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = {}
    for kind in ADAPTER_KINDS:
        run = tmp_path_factory.mktemp("adapters") / kind
        train_adapter(
            AdapterTrainConfig(
                kind=kind,
                student=str(tiny_run / "checkpoint.pt"),
                data=str(tiny_dataset),
                run_dir=str(run),
                steps=120,
                batch_size=8,
                learning_rate=3e-3,
                log_every=10,
                checkpoint_every=30,
                workers=0,
                command=f"tests: adapter {kind}",
            ),
            progress=False,
        )
        runs[kind] = run
    return runs


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_a_few_steps_lower_the_loss(kind: str, adapter_runs: dict[str, Path], tiny_run: Path, tiny_dataset: Path) -> None:
    student = student_from_checkpoint(load_checkpoint(tiny_run / "checkpoint.pt")).eval()
    data = PairedSignals(root=tiny_dataset)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    config = AdapterTrainConfig(kind=kind, student="", data="", run_dir="")
    features = adapter_features(kind, batch, generator=None, config=config)
    torch.manual_seed(0)  # the trainer's seed: the same initial weights
    before = DriverAdapter(config=adapter_config(kind, student=student.config))
    after = adapter_from_checkpoint(load_checkpoint(adapter_runs[kind] / "checkpoint.pt"))
    with torch.no_grad():
        losses = [
            float(student_losses(*student.decode(adapter(features), batch.avatar), batch.target_rgb, batch.target_alpha, config).total)
            for adapter in (before, after)
        ]
    assert losses[1] < 0.9 * losses[0], losses
    log = [json.loads(line) for line in (adapter_runs[kind] / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 120 and log[-1]["code"] < log[0]["code"]


def test_export_writes_one_graph_per_driver_kind_with_parity(
    adapter_runs: dict[str, Path], tiny_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model" / "student.onnx"
    result = train_cli(
        "export",
        "--checkpoint",
        str(tiny_run / "checkpoint.pt"),
        "--out",
        str(out),
        *(arg for kind in ADAPTER_KINDS for arg in ("--adapter", str(adapter_runs[kind] / "checkpoint.pt"))),
    )
    assert result.returncode == 0, result.stderr
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["drivers"] == ["image", "arkit", "landmarks"]
    import onnxruntime as ort

    for kind, (name, shape) in (("arkit", ("curves", (2, 61))), ("landmarks", ("landmarks", (2, 68, 2)))):
        entry = sidecar["adapters"][kind]
        assert entry["parity_max_abs_error"] < 1e-4 and entry["input"]["name"] == name
        session = ort.InferenceSession(str(out.parent / entry["model_file"]), providers=["CPUExecutionProvider"])
        rgb, alpha = session.run(["rgb", "alpha"], {name: np.random.rand(*shape).astype(np.float32), "avatar": np.array([0, 2])})
        assert rgb.shape == (2, 3, 64, 64) and alpha.shape == (2, 1, 64, 64)
    assert "adapter arkit" in sidecar["command"] and "adapter landmarks" in sidecar["command"]
    for kind in ADAPTER_KINDS:  # the same held-out clips, driven through each capture graph
        result = train_cli(
            "eval",
            "--model",
            str(out),
            "--data",
            str(tiny_dataset),
            "--out",
            str(tmp_path / "eval"),
            "--clips",
            "2",
            "--frames",
            "4",
            "--driver",
            kind,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / "eval" / f"eval-clips-{kind}.json").read_text())
        assert report["driver"] == kind and report["pairs"] == 8 and (tmp_path / "eval" / f"contact-sheet-clips-{kind}.png").is_file()


def test_export_refuses_an_adapter_of_another_student(adapter_runs: dict[str, Path], tiny_dataset: Path, tmp_path: Path) -> None:
    from models.training.train_student import StudentTrainConfig, train_student

    other = tmp_path / "other"
    train_student(
        StudentTrainConfig(data=str(tiny_dataset), run_dir=str(other), preset="tiny", steps=2, batch_size=2, workers=0, command="tests"),
        progress=False,
    )
    out = tmp_path / "model.onnx"
    result = train_cli(
        "export", "--checkpoint", str(other / "checkpoint.pt"), "--out", str(out), "--adapter", str(adapter_runs["arkit"] / "checkpoint.pt")
    )
    assert result.returncode == 2 and "another student" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_adapter_cli_refuses_an_unknown_kind(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    result = train_cli(
        "adapter",
        "--kind",
        "mocap",
        "--student",
        str(tiny_run / "checkpoint.pt"),
        "--data",
        str(tiny_dataset),
        "--run",
        str(tmp_path / "run"),
    )
    assert result.returncode == 2 and "unknown adapter kind" in result.stderr
    assert not (tmp_path / "run").exists()


def test_landmarks_of_a_render_land_on_its_face() -> None:
    """The landmarks signal's frame is the crop's: [0, 1] with y down, as the renderer draws."""
    heads = SyntheticHeads(resolution=64)
    render = heads.render(sample_identities(1, generator=torch.Generator().manual_seed(3)), neutral_motion(1))
    points = (render.landmarks[0] / 64).clamp(0, 0.999)  # 68×2 in [0, 1]
    pixels = (points * 64).long()
    assert float(render.alpha[0, 0, pixels[:, 1], pixels[:, 0]].mean()) > 0.9
