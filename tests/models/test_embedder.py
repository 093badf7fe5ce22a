"""Enrollment's model side: the identity embedder, the student driven by identity tensors (model contract v2), the
new-identity samples it meta-learns on, and `megalive-train embedder` (runs, checkpoint, resume, refusals)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoints import embedder_from_checkpoint, load_checkpoint, student_from_checkpoint
from models.cli import main
from models.data.enrollment_samples import PORTRAIT_POSE_JITTER, EnrollmentSamples, EnrollmentSamplesConfig
from models.megaportraits.identity_embedder import IdentityEmbedder, IdentityEmbedderConfig, embedder_config
from models.megaportraits.student import Student, student_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_embedder() -> IdentityEmbedder:
    torch.manual_seed(0)
    return IdentityEmbedder(config=embedder_config("tiny", student_config("tiny", num_avatars=1))).eval()


def test_the_embedder_makes_the_students_identity_tensor_and_averages_its_frames() -> None:
    embedder = tiny_embedder()
    frames = torch.rand(2, 3, 3, 64, 64)  # B×K×3×H×W
    with torch.no_grad():
        identity = embedder(frames)
        assert identity.shape == (2, 8, 16, 16)  # the tiny student's C_id×S×S
        one_by_one = torch.stack([embedder(frames[:, [k]]) for k in range(3)]).mean(dim=0)
    torch.testing.assert_close(identity, one_by_one)  # K frames: the mean of each frame's tensor
    with pytest.raises(ValueError, match="needs 2 entries"):
        IdentityEmbedderConfig(resolution=64, identity_channels=8, identity_size=16, channels=(8,))


def test_the_student_driven_by_identity_tensors_is_the_student_driven_by_index() -> None:
    torch.manual_seed(1)
    student = Student(config=student_config("tiny", num_avatars=3)).eval()
    driver, avatar = torch.rand(2, 3, 64, 64), torch.tensor([2, 0])
    with torch.no_grad():
        by_index, by_tensor = student(driver, avatar), student.drive(driver, student.identity[avatar])
    torch.testing.assert_close(by_index.rgb, by_tensor.rgb)
    torch.testing.assert_close(by_index.alpha, by_tensor.alpha)


def test_enrollment_samples_are_new_identities_drawn_by_index() -> None:
    samples = EnrollmentSamples(config=EnrollmentSamplesConfig(resolution=32, shots=3, seed=5))
    first, again, other = samples[7], samples[7], samples[8]
    assert first.frames.shape == (3, 3, 32, 32) and first.driver.shape == (3, 32, 32) and first.target_landmarks.shape == (68, 2)
    for field in first._fields:
        torch.testing.assert_close(getattr(first, field), getattr(again, field))
    assert not torch.equal(first.frames, other.frames)  # another index: another identity
    # The target is the new identity (its portrait's background corner) in the driver's pose (its landmarks' place).
    torch.testing.assert_close(first.target_rgb[:, :2, :2], first.frames[0, :, :2, :2])
    assert (first.target_rgb[:, :2, :2] - first.driver[:, :2, :2]).abs().max() > 0.01
    assert PORTRAIT_POSE_JITTER < 0.1
    with pytest.raises(ValueError, match="shots"):
        EnrollmentSamplesConfig(resolution=32, shots=0)


def _train(*args: str) -> int:
    return main(["embedder", *args])


def test_embedder_training_runs_resumes_and_refuses(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "embedder"
    common = ["--student", str(tiny_run / "checkpoint.pt"), "--data", str(tiny_dataset), "--run", str(run), "--preset", "tiny"]
    small = ["--native-batch", "2", "--new-batch", "2", "--shots", "2", "--workers", "0", "--checkpoint-every", "2", "--allow-missing-nets"]
    assert _train(*common, *small, "--steps", "2") == 0
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert checkpoint["step"] == 2
    assert len(checkpoint["commands"]) == 2 and checkpoint["commands"][0] == "tests"  # the student's, then this one: provenance
    student, embedder = student_from_checkpoint(checkpoint), embedder_from_checkpoint(checkpoint)
    assert student.num_avatars == 3 and embedder.config.identity_size == student.config.identity_size
    config = json.loads((run / "config.json").read_text())
    assert config["objective"] and config["new"]["shots"] == 2 and config["native"]["avatar_names"]
    assert (run / "samples.png").is_file()
    assert _train(*common, *small, "--steps", "4") == 0  # resumes at step 2
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
    capsys.readouterr()
    assert _train(*[a if a != str(tiny_run / "checkpoint.pt") else str(tmp_path / "none.pt") for a in common], *small) == 2
    assert "no such file" in capsys.readouterr().err
    assert _train(*common, *small, "--shots", "0") == 2
    assert "--shots" in capsys.readouterr().err


def test_an_enrollable_export_takes_identity_tensors_and_ships_its_bank_and_embedder(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    import numpy as np
    import onnxruntime as ort

    from contract.avatar_bank import read_bank
    from contract.model_card import read_model_card

    run = tmp_path / "embedder"
    args = ["--student", str(tiny_run / "checkpoint.pt"), "--data", str(tiny_dataset), "--run", str(run), "--preset", "tiny"]
    small = ["--native-batch", "2", "--new-batch", "2", "--shots", "2", "--workers", "0", "--steps", "2", "--allow-missing-nets"]
    assert _train(*args, *small, "--checkpoint-every", "2") == 0
    out = tmp_path / "model" / "student.onnx"
    assert main(["export", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(out)]) == 0
    card = read_model_card(out)
    assert card.contract == 2 and card.enrollment is not None and card.drivers == ("image", "arkit")
    bank = read_bank(card.enrollment.bank_path)
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    student, embedder = student_from_checkpoint(checkpoint).eval(), embedder_from_checkpoint(checkpoint).eval()
    assert bank.names == tuple(checkpoint["avatar_names"]) and all(record.consent is None for record in bank.records)
    assert str(bank.records[0].provenance["command"]).startswith("tests: write_paired_dataset && tests && ")  # data, student, ...
    np.testing.assert_array_equal(bank.identity, student.identity.detach().numpy())
    driver = torch.rand(2, 3, 64, 64)
    identity = torch.from_numpy(bank.identity[[1, 0]])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["driver", "identity"]
    rgb, _ = session.run(["rgb", "alpha"], {"driver": driver.numpy(), "identity": identity.numpy()})
    with torch.no_grad():
        expected = student(driver, torch.tensor([1, 0])).rgb.numpy()  # the same avatars by index, in torch
    assert np.abs(rgb - expected).max() < 1e-4
    frames = torch.rand(1, 3, 3, 64, 64)
    embedded = ort.InferenceSession(str(card.enrollment.embedder_path), providers=["CPUExecutionProvider"])
    for shots in (1, 3):  # K is free in the graph
        (got,) = embedded.run(["identity"], {"frames": frames[:, :shots].numpy()})
        with torch.no_grad():
            assert np.abs(got - embedder(frames[:, :shots]).numpy()).max() < 1e-4
    # The benchmark enrolls sources through the exported embedder: the student's own avatars anew (same pairs as its
    # bank's tensors), or held-out identities; either way beside the same baselines.
    from models.evaluation import EvalConfig, evaluate

    common = {"model": str(out), "clips": 1, "frames_per_clip": 2, "batch_size": 2}
    own = evaluate(EvalConfig(**common, data=str(tiny_dataset)), progress=False)
    anew = evaluate(EvalConfig(**common, data=str(tiny_dataset), enroll_shots=2), progress=False)
    held_out = evaluate(EvalConfig(**common, sources=2, enroll_shots=1), progress=False)
    assert own.sources == anew.sources and "held-out" in held_out.sources
    assert anew.cross.source_copy == own.cross.source_copy  # the same pairs
    assert anew.cross.model_output != own.cross.model_output  # other identity tensors
    assert EvalConfig(model="m", enroll_shots=8).name == "clips-enrolled-k8"
    # Refined (few-shot), as the server's jobs do it, through the student's weights export wrote beside the graphs.
    refined = evaluate(EvalConfig(**common, sources=2, enroll_shots=1, refine_steps=3), progress=False)
    assert refined.cross.source_copy == held_out.cross.source_copy and refined.cross.model_output != held_out.cross.model_output
    assert refined.enrollment_seconds is not None and held_out.enrollment_seconds is not None
    assert EvalConfig(model="m", enroll_shots=8, refine_steps=100).name == "clips-enrolled-k8-refined100"
    with pytest.raises(ValueError, match="needs --enroll-shots"):
        evaluate(EvalConfig(**common, data=str(tiny_dataset), refine_steps=3), progress=False)
    with pytest.raises(ValueError, match="locked to its avatars"):
        evaluate(EvalConfig(**common), progress=False)
