"""Capture drivers through the puppet: the renderer's face drawn from the wire's curves, the landmark solver, their
export beside the student, the evaluation through them, the sweeps, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.arkit import CURVE_INDEX, NUM_BLENDSHAPES
from models.data.heads import SyntheticHeads, neutral_motion, sample_clip, sample_identities
from models.face_regions import REGION_NAMES, region_masks
from models.megaportraits.puppet import Puppet, PuppetConfig, motion_from_curves, puppet_identity
from models.training.train_landmark_solver import LandmarkSolverTrainConfig, train_landmark_solver

REPO_ROOT = Path(__file__).resolve().parents[2]


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


def curves_with(**values: float) -> torch.Tensor:
    curves = torch.zeros(1, len(CURVE_INDEX))
    for name, value in values.items():
        curves[0, CURVE_INDEX[name]] = value
    return curves


def test_the_puppet_is_the_renderer_posed_by_the_curves() -> None:
    puppet = Puppet(config=PuppetConfig(render_resolution=64, resolution=64))
    curves = torch.rand(2, len(CURVE_INDEX)) * 0.5
    with torch.no_grad():
        drawn = puppet(curves)
    rendered = SyntheticHeads(resolution=64).render(puppet_identity()[[0, 0]], motion_from_curves(curves)).rgb
    torch.testing.assert_close(drawn, rendered)
    # The wire's curves round-trip through the renderer's motion (centred: ARKit has no translation or scale).
    motion = sample_clip(4, generator=torch.Generator().manual_seed(1)).centred()
    back = motion_from_curves(motion.arkit_curves())
    torch.testing.assert_close(back.expression, motion.expression)
    torch.testing.assert_close(torch.stack([back.yaw, back.pitch, back.roll]), torch.stack([motion.yaw, motion.pitch, motion.roll]))
    torch.testing.assert_close(back.framing(), motion.framing())


def test_each_control_moves_its_part_of_the_puppets_face() -> None:
    puppet = Puppet(config=PuppetConfig(render_resolution=48, resolution=96))
    heads = SyntheticHeads(resolution=96)
    masks = region_masks(heads.render(puppet.identity, neutral_motion(1)).landmarks, size=96)[0]  # R×96×96
    with torch.no_grad():
        neutral = puppet(curves_with())
        assert neutral.shape == (1, 3, 96, 96) and 0 <= float(neutral.min()) and float(neutral.max()) <= 1

        def change(region: str, **values: float) -> float:
            difference = (puppet(curves_with(**values)) - neutral).abs().mean(dim=1)[0]  # 96×96
            return float((difference * masks[REGION_NAMES.index(region)]).sum() / masks[REGION_NAMES.index(region)].sum())

        assert change("mouth", jawOpen=1.0) > 5 * change("eyes", jawOpen=1.0)
        assert change("eyes", eyeBlinkLeft=1.0) > 5 * change("mouth", eyeBlinkLeft=1.0)
        assert change("eyes", headYaw=0.4) > 0.02
        # The six eye rotations are accepted and not drawn: gaze is the eyeLook* blendshapes.
        assert change("eyes", leftEyeYaw=0.5, rightEyePitch=0.5) == 0.0
        assert change("eyes", eyeLookInLeft=1.0) > 0.002  # the iris moves: a small part of the eye boxes


@pytest.fixture(scope="module")
def solver_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("solver") / "solver.pt"
    config = LandmarkSolverTrainConfig(
        out=str(out), motions=2048, steps=600, batch_size=128, learning_rate=3e-3, held_out=256, command="tests: landmark-solver"
    )
    train_landmark_solver(config, progress=False)
    return out


def test_the_landmark_solver_reads_the_face_better_than_the_mean(solver_path: Path) -> None:
    from models.checkpoints import load_checkpoint, load_landmark_solver

    held_out = load_checkpoint(solver_path)["held_out"]  # fresh identities in fresh clip frames
    assert held_out["eyes_and_mouth"] < 0.8 * held_out["eyes_and_mouth_zero_answer"], held_out
    assert held_out["eyes_and_mouth"] < 0.8 * held_out["eyes_and_mouth_mean_answer"], held_out
    assert held_out["rotation_deg"] < 0.5 * held_out["rotation_mean_answer_deg"], held_out
    solver = load_landmark_solver(solver_path)
    heads = SyntheticHeads(resolution=128)
    identity = sample_identities(1, generator=torch.Generator().manual_seed(5))[[0, 0]]  # one face, mouth shut and open
    motion = neutral_motion(2).with_controls({"jawOpen": torch.tensor([0.0, 1.0])})
    with torch.no_grad():
        solved = solver(heads.landmarks(identity, motion) / 128)
    jaw = solved.curves[:, CURVE_INDEX["jawOpen"]]
    assert float(jaw[1] - jaw[0]) > 0.4, jaw  # an open mouth reads as one
    assert solved.curves.shape == (2, len(CURVE_INDEX)) and float(solved.curves[:, NUM_BLENDSHAPES + 3 :].abs().max()) == 0


@pytest.fixture(scope="module")
def exported(tiny_run: Path, solver_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "student.onnx"
    result = train_cli("export", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(out), "--landmark-solver", str(solver_path))
    assert result.returncode == 0, result.stderr
    return out


def test_export_writes_the_puppet_graphs_with_parity(exported: Path) -> None:
    import onnxruntime as ort

    sidecar = json.loads(exported.with_suffix(".json").read_text())
    assert sidecar["drivers"] == ["image", "arkit", "landmarks"]
    assert "tests: landmark-solver" in sidecar["command"]  # the solver's command is in the model's provenance
    # batch 3: not the batch the export traced with (2), so a batch size frozen into the graph fails here
    for kind, (name, shape) in (("arkit", ("curves", (3, 61))), ("landmarks", ("landmarks", (3, 68, 2)))):
        entry = sidecar["adapters"][kind]
        assert entry["parity_max_abs_error"] < 1e-4 and entry["input"]["name"] == name
        assert entry["config"]["design"] == "puppet" and entry["config"]["puppet"] == {"render_resolution": 24, "resolution": 64}
        session = ort.InferenceSession(str(exported.parent / entry["model_file"]), providers=["CPUExecutionProvider"])
        rgb, alpha = session.run(["rgb", "alpha"], {name: np.random.rand(*shape).astype(np.float32), "avatar": np.array([0, 2, 1])})
        assert rgb.shape == (3, 3, 64, 64) and alpha.shape == (3, 1, 64, 64)
    assert "landmark_solver" in sidecar["adapters"]["landmarks"]["config"]


@pytest.mark.parametrize(
    ("kind", "flags", "name"),
    [("arkit", (), "clips-arkit"), ("landmarks", (), "clips-landmarks"), ("image", ("--centred",), "clips-centred")],
)
def test_the_evaluation_drives_through_each_capture_graph(
    kind: str, flags: tuple[str, ...], name: str, exported: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    arguments = ("--model", str(exported), "--data", str(tiny_dataset), "--out", str(tmp_path), "--clips", "2", "--frames", "4")
    result = train_cli("eval", *arguments, "--driver", kind, *flags)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / f"eval-{name}.json").read_text())
    assert report["driver"] == kind and report["pairs"] == 8 and (tmp_path / f"contact-sheet-{name}.png").is_file()
    centred = any("drawn centred" in note for note in report["notes"])
    # ARKit carries no translation: its rows are scored on centred clips, and say so; --centred puts the others there too
    assert centred == (kind != "landmarks")


def test_sweeps_write_a_sheet_per_avatar_and_a_change_per_control(exported: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    from models.sweeps import SWEEPS

    result = train_cli("sweeps", "--model", str(exported), "--data", str(tiny_dataset), "--out", str(tmp_path), "--steps", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "sweeps.json").read_text())
    assert [change["curve"] for change in report["changes"]] == [sweep.curve for sweep in SWEEPS]
    assert all(len(change["avatar"]) == 3 for change in report["changes"])
    puppet = {change["curve"]: change["puppet"] for change in report["changes"]}
    assert puppet["jawOpen"] > 1 and puppet["eyeBlinkLeft"] > 1  # the puppet itself moves (8-bit levels)
    assert sorted(path.name for path in tmp_path.glob("sweeps-*.jpg")) == ["sweeps-ada.jpg", "sweeps-basil.jpg", "sweeps-cleo.jpg"]
    assert "jawOpen" in result.stdout


def test_capture_refusals_are_one_line(tiny_run: Path, exported: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    checkpoint = str(tiny_run / "checkpoint.pt")
    cases = [
        (
            ("export", "--checkpoint", checkpoint, "--out", str(tmp_path / "a.onnx"), "--landmark-solver", checkpoint),
            "not a landmark-solver",
        ),
        (("export", "--checkpoint", checkpoint, "--out", str(tmp_path / "b.onnx"), "--puppet-resolution", "8"), "--puppet-resolution"),
        (
            ("export", "--checkpoint", checkpoint, "--out", str(tmp_path / "c.onnx"), "--no-capture", "--landmark-solver", checkpoint),
            "puppet",
        ),
    ]
    for args, expected in cases:
        result = train_cli(*args)
        assert result.returncode == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    image_only = tmp_path / "image.onnx"
    assert train_cli("export", "--checkpoint", checkpoint, "--out", str(image_only), "--no-capture").returncode == 0
    result = train_cli("sweeps", "--model", str(image_only), "--data", str(tiny_dataset), "--out", str(tmp_path / "s"))
    assert result.returncode == 2 and "no puppet-driven arkit graph" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["image.json", "image.onnx", "image.thumbs.npy"]


def test_landmarks_of_a_render_land_on_its_face() -> None:
    """The landmarks signal's frame is the crop's: [0, 1] with y down, as the renderer draws."""
    heads = SyntheticHeads(resolution=64)
    render = heads.render(sample_identities(1, generator=torch.Generator().manual_seed(3)), neutral_motion(1))
    points = (render.landmarks[0] / 64).clamp(0, 0.999)  # 68×2 in [0, 1]
    pixels = (points * 64).long()
    assert float(render.alpha[0, 0, pixels[:, 1], pixels[:, 0]].mean()) > 0.9
