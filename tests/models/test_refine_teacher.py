"""Few-shot refinement against a teacher's reenactments (DESIGN §4.3): the pictures fitted are the teacher's (and its
enhancer's) outputs resized to the student's side, the fit lowers its loss moving only the identity tensor, and
`megalive-train enroll --target teacher` runs a job end to end, records its target, and refuses bad teachers and
enhancers in one line with exit 2, writing nothing. Teachers and enhancers here are random tiny checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.model_card import read_model_card
from contract.refinement_job import RefinementInput, parse_line, read_output, write_input
from models.blocks import resize_square
from models.checkpoints import BASE_KIND, ENHANCER_KIND, load_checkpoint, save_checkpoint, state_digest
from models.cli import main
from models.data.heads import SyntheticHeads, sample_clip, sample_identities
from models.megaportraits.base import BaseModel, base_config
from models.megaportraits.enhancer import Enhancer, enhancer_config
from models.megaportraits.motion import PoseSource
from models.megaportraits.student import Student, student_config
from models.training.refine_identity import RefineConfig, refine_identity
from models.training.teacher_reenactments import (
    ReenactmentConfig,
    load_teacher_target,
    synthetic_drivers,
    teacher_reenactments,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_teacher_checkpoint(path: Path, preset: str = "tiny", *, pose_source: PoseSource = "learned", seed: int = 0) -> Path:
    """A base-model checkpoint of random weights, as the base trainer lays one out."""
    torch.manual_seed(seed)
    config = base_config(preset, pose_source=pose_source)
    save_checkpoint(
        {
            "generator": BaseModel(config=config).state_dict(),
            "discriminator": {},
            "model_config": asdict(config),
            "train_config": {"preset": preset},
            "resolved_config": {},
        },
        path,
        kind=BASE_KIND,
    )
    return path


def _enhancer(path: Path, *, preset: str, teacher: Path, digest: str, seed: int = 0) -> Path:
    """An enhancer checkpoint trained (it says) behind ``teacher`` of ``preset``; its zero head perturbed so that it is
    not plain bicubic interpolation."""
    torch.manual_seed(seed)
    enhancer = Enhancer(config=enhancer_config(preset))
    with torch.no_grad():
        enhancer.head.weight.normal_(std=0.05)
    recorded = {"preset": preset, "path": str(teacher), "digest": digest, "resolution": base_config(preset).resolution}
    save_checkpoint(
        {
            "enhancer": enhancer.state_dict(),
            "discriminator": {},
            "model_config": asdict(enhancer.config),
            "train_config": {"teacher": str(teacher)},
            "teacher": recorded,
        },
        path,
        kind=ENHANCER_KIND,
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("teacher-target")
    tiny = random_teacher_checkpoint(folder / "tiny.pt")
    digest = state_digest(load_checkpoint(tiny)["generator"])
    return {
        "teacher": tiny,
        "given_teacher": random_teacher_checkpoint(folder / "given.pt", pose_source="given"),
        "enhancer": _enhancer(folder / "enhancer.pt", preset="tiny", teacher=tiny, digest=digest),
        # An enhancer is checked against the teacher preset its checkpoint records: no cpu128 teacher is needed.
        "other_enhancer": _enhancer(folder / "enhancer-cpu128.pt", preset="cpu128", teacher=folder / "cpu128.pt", digest="0" * 16),
    }


def _person(count: int, resolution: int, *, seed: int = 5) -> torch.Tensor:
    """K frames of one SyntheticHeads identity talking: K×3×H×W."""
    generator = torch.Generator().manual_seed(seed)
    who, clip = sample_identities(1, generator=generator), sample_clip(count, generator=generator)
    with torch.no_grad():
        return SyntheticHeads(resolution=resolution).render(who, clip).rgb


# -- the reenactments -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_enhancer", [False, True])
def test_the_reenactments_are_the_teachers_outputs_resized_to_the_students_side(checkpoints: dict[str, Path], with_enhancer: bool) -> None:
    target = load_teacher_target(teacher=checkpoints["teacher"], enhancer=checkpoints["enhancer"] if with_enhancer else None)
    assert target.resolution == (128 if with_enhancer else 64)
    frames = _person(2, 32)  # the student's side (32) is not the teacher's (64) nor the enhancer's (128)
    config = ReenactmentConfig(count=3, identities=2, seed=1)
    reenactments = teacher_reenactments(target, frames=frames, landmarks=None, config=config)
    assert reenactments.targets.shape == (6, 3, 32, 32) and reenactments.masks.shape == (6, 1, 32, 32)
    assert reenactments.drivers.shape == (6, 3, 32, 32) and reenactments.landmarks is not None
    assert reenactments.sources.tolist() == [0, 0, 0, 1, 1, 1] and reenactments.driver_index.tolist() == [0, 1, 2, 0, 1, 2]

    drivers = synthetic_drivers(config, resolution=64, student_resolution=32)  # a pure function of the config
    assert drivers.teacher.shape == (3, 3, 64, 64)
    torch.testing.assert_close(reenactments.drivers[4], resize_square(drivers.teacher[1:2], 32)[0].clamp(0, 1))
    k, n = 1, 2  # frame 1 driven by driver 2: m = k·N + n
    with torch.no_grad():
        direct = target.model(resize_square(frames[k : k + 1], 64), drivers.teacher[n : n + 1])  # one plain teacher call
        rgb, alpha = direct.rgb.clamp(0, 1), direct.alpha.clamp(0, 1)
        if with_enhancer:
            assert target.enhancer is not None
            enhanced = target.enhancer(rgb, alpha)
            rgb, alpha = enhanced.rgb.clamp(0, 1), enhanced.alpha.clamp(0, 1)  # 1×3×128×128
    torch.testing.assert_close(reenactments.targets[k * 3 + n], resize_square(rgb, 32)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(reenactments.masks[k * 3 + n], resize_square(alpha, 32)[0], atol=1e-5, rtol=0)
    assert not torch.allclose(reenactments.targets[k * 3 + n], reenactments.targets[n], atol=1e-4)  # another source, another picture

    at_64 = synthetic_drivers(config, resolution=64, student_resolution=64)  # the drivers' landmarks, halved to the student's pixels
    assert drivers.landmarks is not None and at_64.landmarks is not None and reenactments.landmarks is not None
    torch.testing.assert_close(drivers.landmarks, at_64.landmarks / 2)
    torch.testing.assert_close(reenactments.landmarks[4], drivers.landmarks[1])


def test_the_persons_own_frames_can_drive_the_teacher(checkpoints: dict[str, Path]) -> None:
    target = load_teacher_target(teacher=checkpoints["teacher"], enhancer=None)
    frames, landmarks = _person(3, 64), torch.rand(3, 68, 2) * 40 + 12
    reenactments = teacher_reenactments(target, frames=frames, landmarks=landmarks, config=ReenactmentConfig(count=2, drivers="frames"))
    assert len(reenactments.targets) == 3 * 2  # drivers: frames 0 and 2, spread evenly
    torch.testing.assert_close(reenactments.drivers[1], frames[2])
    torch.testing.assert_close(reenactments.landmarks[1], landmarks[2])  # type: ignore[index]


def test_refinement_against_the_reenactments_lowers_its_loss_and_moves_only_the_identity(checkpoints: dict[str, Path]) -> None:
    torch.manual_seed(0)
    student = Student(config=student_config("tiny", num_avatars=1))
    before = {name: value.clone() for name, value in student.state_dict().items()}
    start = student.identity[0].detach().clone()
    frames = _person(2, 64)
    target = load_teacher_target(teacher=checkpoints["teacher"], enhancer=checkpoints["enhancer"])
    reenactments = teacher_reenactments(target, frames=frames, landmarks=None, config=ReenactmentConfig(count=3))
    result = refine_identity(
        student,
        identity=start,
        frames=frames,
        landmarks=None,
        config=RefineConfig(steps=25, learning_rate=0.05, frames_weight=0.0),
        perceptual=None,
        reenactments=reenactments,
    )
    assert result.steps == 25 and result.last_loss < result.first_loss
    assert not torch.equal(result.identity, start)
    for name, value in student.state_dict().items():
        assert torch.equal(value, before[name]), name
    with pytest.raises(ValueError, match="nothing to fit"):
        refine_identity(student, identity=start, frames=frames, landmarks=None, config=RefineConfig(frames_weight=0.0), perceptual=None)
    with pytest.raises(ValueError, match="reenactment drivers and targets"):
        refine_identity(
            student,
            identity=start,
            frames=frames,
            landmarks=None,
            config=RefineConfig(),
            perceptual=None,
            reenactments=reenactments._replace(targets=reenactments.targets[:, :, :32, :32]),
        )


# -- megalive-train enroll --target teacher ---------------------------------------------------------------------------


def _job(tmp_path: Path, model: Path) -> Path:
    card = read_model_card(model)
    assert card.enrollment is not None
    rng = np.random.default_rng(3)
    job = tmp_path / "job.in.npz"
    frames = (_person(2, 64).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # K×3×H×W -> K×H×W×3
    write_input(
        RefinementInput(
            frames=frames,
            landmarks=(rng.random((2, 68, 2)) * 40 + 12).astype(np.float32),
            identity=rng.standard_normal(card.enrollment.identity_shape).astype(np.float32),
        ),
        job,
    )
    return job


def test_enroll_against_the_teacher_runs_lowers_its_loss_and_records_its_target(
    tmp_path: Path, refinable_model_path: Path, checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    job, out = _job(tmp_path, refinable_model_path), tmp_path / "job.out.npz"
    argv = ["enroll", "--model", str(refinable_model_path), "--job", str(job), "--out", str(out), "--allow-missing-nets"]
    teacher = ["--target", "teacher", "--teacher", str(checkpoints["teacher"]), "--enhancer", str(checkpoints["enhancer"])]
    assert main([*argv, *teacher, "--reenactments", "3", "--dry-run"]) == 0
    planned = json.loads(capsys.readouterr().out)["target"]
    assert planned["kind"] == "teacher" and planned["reenactments"] == 3 and not out.exists()

    assert main([*argv, *teacher, "--reenactments", "3", "--steps", "20", "--lr", "0.05", "--progress-lines"]) == 0
    lines = [parse_line(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines if line and "step" in line] == list(range(1, 21))
    done = lines[-1]
    assert done is not None and done["done"] is True
    result = read_output(out)
    summary = result.summary
    assert summary["steps"] == 20 and summary["last_loss"] < summary["first_loss"]
    recorded = summary["target"]
    assert recorded["kind"] == "teacher" and recorded["reenactments"] == 3 and recorded["pictures"] == 6 and not recorded["with_frames"]
    assert recorded["teacher"]["path"] == str(checkpoints["teacher"]) and recorded["teacher"]["resolution"] == 64
    assert recorded["teacher"]["digest"] == state_digest(load_checkpoint(checkpoints["teacher"])["generator"])
    enhancer = recorded["enhancer"]
    assert enhancer["path"] == str(checkpoints["enhancer"]) and enhancer["resolution"] == 128 and enhancer["trained_behind_this_teacher"]
    assert summary["refine"]["frames_weight"] == 0.0
    assert result.identity.shape == read_model_card(refinable_model_path).enrollment.identity_shape  # type: ignore[union-attr]

    assert main([*argv, "--target", "teacher", "--teacher", str(checkpoints["teacher"]), "--steps", "2", "--with-frames"]) == 0
    summary = read_output(out).summary
    assert summary["target"]["enhancer"] is None and summary["target"]["with_frames"] and summary["refine"]["frames_weight"] == 1.0
    assert main([*argv, "--steps", "2"]) == 0  # the frames target as before
    assert read_output(out).summary["target"] == {"kind": "frames"}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--target", "teacher"], "--target teacher needs --teacher"),
        (
            ["--target", "teacher", "--teacher", "{enhancer}"],
            "is not a MegaPortraits base-model checkpoint: it holds kind 'megaportraits-enhancer'",
        ),
        (["--target", "teacher", "--teacher", "{job}"], "unreadable"),
        (["--target", "teacher", "--teacher", "{teacher}", "--enhancer", "{other_enhancer}"], "teacher preset 'cpu128', not 'tiny'"),
        (["--target", "teacher", "--teacher", "{teacher}", "--enhancer", "{teacher}"], "is not a high-resolution enhancer checkpoint"),
        (["--target", "teacher", "--teacher", "{given_teacher}"], "reads head poses given by the caller"),
        (["--target", "teacher", "--teacher", "{teacher}", "--reenactments", "0"], "reenactments need count ≥ 1"),
        (["--teacher", "{teacher}"], "--teacher: only with --target teacher"),
    ],
)
def test_enroll_refuses_a_bad_teacher_target_in_one_line_writing_nothing(
    tmp_path: Path,
    refinable_model_path: Path,
    checkpoints: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    expected: str,
) -> None:
    job, out = _job(tmp_path, refinable_model_path), tmp_path / "job.out.npz"
    paths = {**{name: str(path) for name, path in checkpoints.items()}, "job": str(job)}
    argv = ["enroll", "--model", str(refinable_model_path), "--job", str(job), "--out", str(out), "--allow-missing-nets"]
    assert main([*argv, *(option.format(**paths) for option in options)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("megalive-train enroll: ") and error.count("\n") == 1 and expected in error, error
    assert not out.exists()


def test_enroll_needs_a_job_and_an_out_but_for_a_dry_run(
    refinable_model_path: Path, checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["enroll", "--model", str(refinable_model_path), "--allow-missing-nets"]
    assert main(model) == 2
    assert "--job and --out are required (only --dry-run goes without them)" in capsys.readouterr().err
    # What `megalive serve --refine-teacher` runs at start: the model and the teacher checked, no job.
    assert main([*model, "--target", "teacher", "--teacher", str(checkpoints["teacher"]), "--dry-run"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["frames"] is None and planned["target"]["kind"] == "teacher"
