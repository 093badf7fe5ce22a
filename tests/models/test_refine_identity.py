"""Few-shot refinement: only the identity tensor moves, the fit lowers the self-reenactment loss, a callback stops it,
the exported weights rebuild the same student, and `megalive-train enroll` runs a job file end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.model_card import read_model_card
from contract.refinement_job import RefinementInput, parse_line, read_output, write_input
from models.checkpoints import student_from_weights
from models.megaportraits.student import Student, student_config
from models.training.refine_identity import RefineConfig, refine_identity

REPO_ROOT = Path(__file__).resolve().parents[2]


def _frames(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, 64, 64, generator=generator)


def test_refinement_fits_only_the_identity_tensor_and_lowers_its_loss() -> None:
    torch.manual_seed(0)
    student = Student(config=student_config("tiny", num_avatars=2))
    before = {name: value.clone() for name, value in student.state_dict().items()}
    start = student.identity[0].detach().clone()
    frames = _frames(3)
    landmarks = torch.rand(3, 68, 2) * 40 + 12
    losses: list[float] = []
    result = refine_identity(
        student,
        identity=start,
        frames=frames,
        landmarks=landmarks,
        config=RefineConfig(steps=30, learning_rate=0.05),
        perceptual=None,
        on_step=lambda step, loss: losses.append(loss) is None,
    )
    assert result.steps == 30 and not result.cancelled and len(losses) == 30
    assert result.last_loss < result.first_loss  # the fit works
    assert not torch.equal(result.identity, start) and result.identity.shape == start.shape
    for name, value in student.state_dict().items():  # the student itself never moved
        assert torch.equal(value, before[name]), name


def test_a_callback_that_says_stop_ends_the_fit_as_cancelled() -> None:
    student = Student(config=student_config("tiny", num_avatars=1))
    result = refine_identity(
        student,
        identity=student.identity[0].detach(),
        frames=_frames(2),
        landmarks=None,
        config=RefineConfig(steps=50),
        perceptual=None,
        on_step=lambda step, loss: step < 4,
    )
    assert result.cancelled and result.steps == 4


def test_refinement_refuses_frames_or_tensors_of_another_shape() -> None:
    student = Student(config=student_config("tiny", num_avatars=1))
    identity = student.identity[0].detach()
    with pytest.raises(ValueError, match="frames must be"):
        refine_identity(student, identity=identity, frames=torch.rand(2, 3, 32, 32), landmarks=None, config=RefineConfig(), perceptual=None)
    with pytest.raises(ValueError, match="identity must be"):
        refine_identity(student, identity=identity[:2], frames=_frames(1), landmarks=None, config=RefineConfig(), perceptual=None)
    with pytest.raises(ValueError, match="at least|steps"):
        RefineConfig(steps=0)


def test_the_exported_weights_rebuild_the_student_that_was_exported(refinable_model_path: Path) -> None:
    import onnxruntime as ort

    card = read_model_card(refinable_model_path)
    assert card.enrollment is not None and card.enrollment.weights_path is not None
    student = student_from_weights(card.enrollment.weights_path, card.enrollment.student_config or {})
    driver = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    identity = np.random.default_rng(2).standard_normal((2, *card.enrollment.identity_shape)).astype(np.float32)
    with torch.no_grad():
        rgb, _ = student.drive(torch.from_numpy(driver), torch.from_numpy(identity))
    graph = ort.InferenceSession(str(refinable_model_path), providers=["CPUExecutionProvider"])
    (expected,) = graph.run(["rgb"], {"driver": driver, "identity": identity})
    np.testing.assert_allclose(rgb.numpy(), expected, atol=1e-4)


def _job(tmp_path: Path, model: Path) -> Path:
    card = read_model_card(model)
    assert card.enrollment is not None
    rng = np.random.default_rng(3)
    job = tmp_path / "job.in.npz"
    write_input(
        RefinementInput(
            frames=rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
            landmarks=(rng.random((2, 68, 2)) * 40 + 12).astype(np.float32),
            identity=rng.standard_normal(card.enrollment.identity_shape).astype(np.float32),
        ),
        job,
    )
    return job


def test_enroll_command_runs_a_job_file_and_reports_each_step(tmp_path: Path, refinable_model_path: Path) -> None:
    job, out = _job(tmp_path, refinable_model_path), tmp_path / "job.out.npz"
    command = [sys.executable, "-m", "models.cli", "enroll", "--model", str(refinable_model_path), "--job", str(job), "--out", str(out)]
    done = subprocess.run(
        [*command, "--steps", "5", "--progress-lines", "--allow-missing-nets"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    lines = [parse_line(line) for line in done.stdout.splitlines()]
    assert [line["step"] for line in lines if line and "step" in line] == [1, 2, 3, 4, 5]
    assert lines[-1] is not None and lines[-1]["done"] is True and lines[-1]["steps"] == 5
    result = read_output(out)
    assert result.summary["steps"] == 5 and result.identity.shape == read_model_card(refinable_model_path).enrollment.identity_shape
    dry = subprocess.run([*command, "--dry-run", "--allow-missing-nets"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and json.loads(dry.stdout)["frames"] == 2


def test_enroll_command_refuses_a_model_without_weights_in_one_line(tmp_path: Path, enrollable_model_path: Path) -> None:
    job = _job(tmp_path, enrollable_model_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "models.cli",
            "enroll",
            "--model",
            str(enrollable_model_path),
            "--job",
            str(job),
            "--out",
            str(tmp_path / "o.npz"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no student weights" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()
