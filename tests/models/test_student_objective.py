"""The student's objective: region-weighted L1, the loss networks (refused when missing unless allowed, and
recorded), and one training step with every term."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contract.landmarks import canonical_ibug68
from models.cli import main
from models.face_regions import region_boxes, region_masks
from models.nets.weights import FACE_NETWORK, PERCEPTUAL_NETWORK
from models.training.common import TrainingError
from models.training.objective_weights import ObjectiveWeights
from models.training.student_objective import (
    STUDENT_DISCRIMINATORS,
    StudentObjective,
    load_loss_networks,
    region_weighted_l1,
)


def _landmarks(size: int, batch: int = 1) -> torch.Tensor:
    return torch.tensor(canonical_ibug68(), dtype=torch.float32).unsqueeze(0).repeat(batch, 1, 1) * size  # B×68×2 pixels


def test_region_boxes_cover_the_eyes_and_mouth_and_stay_in_the_image() -> None:
    landmarks = _landmarks(256)
    boxes = region_boxes(landmarks, size=256)[0]  # R×4
    eyes, mouth = boxes.tolist()
    assert eyes[3] < mouth[3] and eyes[2] - eyes[0] > mouth[2] - mouth[0]  # the eyes above the mouth, and wider
    for (x0, y0, x1, y1), points in ((eyes, range(36, 48)), (mouth, range(48, 68))):
        inside = landmarks[0, list(points)]
        assert (inside[:, 0] >= x0).all() and (inside[:, 0] < x1).all() and (inside[:, 1] >= y0).all() and (inside[:, 1] < y1).all()
    edge = landmarks.clone()
    edge[..., 0] -= 120  # the face mostly left of the frame: boxes clipped, still at least a pixel
    clipped = region_boxes(edge, size=256)[0]
    assert (clipped[:, 0] >= 0).all() and (clipped[:, 2] > clipped[:, 0]).all()
    masks = region_masks(landmarks, size=256)
    assert masks.shape == (1, 2, 256, 256) and masks[0, 0].sum() == (eyes[2] - eyes[0]) * (eyes[3] - eyes[1])


def test_region_weighted_l1_counts_an_error_on_the_eyes_more_than_one_on_the_background() -> None:
    landmarks = _landmarks(64)
    target = torch.zeros(1, 3, 64, 64)
    (x0, y0, x1, y1), _ = region_boxes(landmarks, size=64)[0].tolist()
    on_eyes, on_background = target.clone(), target.clone()
    on_eyes[..., y0 : y0 + 2, x0 : x0 + 2] = 1
    on_background[..., 60:62, 0:2] = 1
    eyes = region_weighted_l1(on_eyes, target, landmarks, region_weight=4.0)
    background = region_weighted_l1(on_background, target, landmarks, region_weight=4.0)
    torch.testing.assert_close(eyes, 5 * background)
    torch.testing.assert_close(region_weighted_l1(on_eyes, target, landmarks, region_weight=0.0), background)


def test_every_term_runs_and_the_discriminator_learns_apart_from_the_student() -> None:
    objective = StudentObjective(
        weights=ObjectiveWeights(),
        networks=load_loss_networks(ObjectiveWeights(), allow_missing=False),
        discriminator=STUDENT_DISCRIMINATORS["small"],
        perceptual_size=32,
    )
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 64, 64, requires_grad=True)
    target = torch.rand(2, 3, 64, 64)
    alpha = torch.rand(2, 1, 64, 64)
    terms = objective.generator_terms(rgb, alpha, target, alpha, _landmarks(64, batch=2))
    assert set(terms.terms) == {"l1", "ssim", "mask", "perceptual", "face", "adversarial", "matching"}
    assert all(torch.isfinite(value) for value in terms.terms.values())
    terms.total.backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert objective.discriminator is not None
    assert all(parameter.grad is None for parameter in objective.discriminator.parameters())  # the generator's step leaves it
    objective.discriminator_loss(rgb, target).backward()
    assert any(parameter.grad is not None for parameter in objective.discriminator.parameters())


def test_missing_loss_networks_are_refused_unless_allowed_and_then_recorded(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEGALIVE_NETS_DIR", str(tmp_path / "no-nets"))
    with pytest.raises(TrainingError, match="expected sha256"):
        load_loss_networks(ObjectiveWeights(), allow_missing=False)
    common = ["student", "--data", str(tiny_dataset), "--preset", "tiny", "--steps", "2", "--batch", "2", "--workers", "0"]
    assert main([*common, "--run", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("megalive-train student: ") and error.count("\n") == 1 and "--allow-missing-nets" in error
    assert not (tmp_path / "refused" / "checkpoint.pt").exists()
    assert main([*common, "--run", str(tmp_path / "allowed"), "--allow-missing-nets"]) == 0
    networks = json.loads((tmp_path / "allowed" / "config.json").read_text())["objective"]["networks"]
    assert networks[PERCEPTUAL_NETWORK].startswith("absent: ") and networks[FACE_NETWORK].startswith("absent: ")
    assert main([*common, "--run", str(tmp_path / "off"), "--perceptual-weight", "0", "--face-weight", "0"]) == 0  # off: no files needed
    networks = json.loads((tmp_path / "off" / "config.json").read_text())["objective"]["networks"]
    assert set(networks.values()) == {"off (weight 0)"}


def test_bad_objective_weights_get_one_line(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["student", "--data", str(tiny_dataset), "--run", str(tmp_path / "r"), "--face-weight", "-1"]) == 2
    assert "the face weight must be in [0, 1000], got -1.0" in capsys.readouterr().err


def test_training_with_every_term_records_the_networks_keeps_the_discriminator_and_resumes(tiny_dataset: Path, tmp_path: Path) -> None:
    from models.checkpoints import load_checkpoint
    from models.training.train_student import StudentTrainConfig, train_student

    run = tmp_path / "run"
    config = StudentTrainConfig(
        data=str(tiny_dataset), run_dir=str(run), preset="tiny", steps=3, batch_size=2, log_every=1, checkpoint_every=2, workers=0
    )
    summary = train_student(config, progress=False)
    assert summary.steps == 3 and {"perceptual", "face", "adversarial", "matching", "discriminator"} <= set(summary.final_losses)
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["objective"]["networks"] == {PERCEPTUAL_NETWORK: "active", FACE_NETWORK: "active"}
    assert resolved["objective"]["discriminator"]["channels"] == [16, 32, 64, 128]
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert {"discriminator", "optimiser_discriminator", "scheduler_discriminator"} <= set(checkpoint)
    resumed = train_student(StudentTrainConfig(**{**config.__dict__, "steps": 4}), progress=False)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert resumed.steps == 4 and steps == [1, 2, 3, 4]
    without_gan = StudentTrainConfig(
        **{**config.__dict__, "steps": 5, "objective": ObjectiveWeights(adversarial=0.0, feature_matching=0.0)}
    )
    with pytest.raises(TrainingError, match="another objective"):
        train_student(without_gan, progress=False)
