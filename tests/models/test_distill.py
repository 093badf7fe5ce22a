"""Distillation (`megalive-train student --target teacher`): the teacher's foreground over each avatar's
background plate is the student's target, and a student trained on it learns it rather than the renderer's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoints import student_from_checkpoint
from models.data.heads import SyntheticHeads, neutral_motion
from models.data.paired import PairedHeads, load_identities
from models.megaportraits.distill import TeacherAvatars, TeacherTargets, background_plates
from models.training.common import TrainingError
from models.training.train_student import StudentTrainConfig, train_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_background_plate_is_the_frame_without_the_head(tiny_dataset: Path) -> None:
    avatars = load_identities(tiny_dataset / "avatars.npz")
    plates = background_plates(avatars, resolution=64)
    neutral = SyntheticHeads(resolution=64).render(avatars, neutral_motion(len(avatars)))
    background = (neutral.alpha == 0).expand_as(neutral.rgb)
    assert torch.allclose(plates[background], neutral.rgb[background], atol=1e-5)  # the same background where no head is
    head = (neutral.alpha > 0.99).expand_as(neutral.rgb)
    assert (plates[head] - neutral.rgb[head]).abs().mean() > 0.05  # and no head where the head was


def test_teacher_targets_are_its_foreground_over_the_plate_at_the_students_size(teacher: Path, tiny_dataset: Path) -> None:
    avatars = load_identities(tiny_dataset / "avatars.npz")
    reference = TeacherAvatars.from_checkpoint(teacher)
    reference.set_sources(SyntheticHeads(resolution=64).render(avatars, neutral_motion(len(avatars))).rgb)
    driver, avatar = PairedHeads(root=tiny_dataset)[0][0].unsqueeze(0), torch.tensor([1])
    rgb, alpha = reference(driver, avatar)
    plates = background_plates(avatars, resolution=64)
    same_size = TeacherTargets(teacher=TeacherAvatars.from_checkpoint(teacher), avatars=avatars, resolution=64)
    target_rgb, target_alpha = same_size(driver, avatar)
    assert torch.allclose(target_alpha, alpha) and torch.allclose(target_rgb, rgb * alpha + plates[1:2] * (1 - alpha), atol=1e-6)
    larger = TeacherTargets(teacher=TeacherAvatars.from_checkpoint(teacher), avatars=avatars, resolution=128)
    big_rgb, big_alpha = larger(torch.nn.functional.interpolate(driver, size=128, mode="bilinear"), avatar)
    assert big_rgb.shape == (1, 3, 128, 128) and big_alpha.shape == (1, 1, 128, 128)


def test_a_student_distilled_from_the_teacher_learns_the_teachers_targets(teacher: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    config = StudentTrainConfig(
        data=str(tiny_dataset),
        run_dir=str(tmp_path / "distilled"),
        preset="tiny",
        target="teacher",
        teacher=str(teacher),
        steps=40,
        batch_size=8,
        learning_rate=3e-3,
        log_every=10,
        checkpoint_every=40,
        workers=0,
        colour_jitter=0.0,
        warp=0.0,
    )
    train_student(config, progress=False)
    recorded = json.loads((tmp_path / "distilled" / "config.json").read_text())["targets"]
    assert recorded["source"] == "teacher" and recorded["checkpoint"] == str(teacher)
    student = student_from_checkpoint(torch.load(tmp_path / "distilled" / "checkpoint.pt", weights_only=True)).eval()
    dataset = PairedHeads(root=tiny_dataset)
    driver, renderer_rgb, _, avatar = (
        torch.stack([torch.as_tensor(item[k]) for item in (dataset[i] for i in range(16))]) for k in range(4)
    )
    targets = TeacherTargets(
        teacher=TeacherAvatars.from_checkpoint(teacher), avatars=load_identities(tiny_dataset / "avatars.npz"), resolution=64
    )
    with torch.no_grad():
        rgb, _ = student(driver, avatar)
        teacher_rgb, _ = targets(driver, avatar)
    # An untrained teacher draws nothing like the renderer: the student must sit near the teacher's targets.
    assert (rgb - teacher_rgb).abs().mean() < 0.5 * (rgb - renderer_rgb).abs().mean()

    with pytest.raises(TrainingError, match="another run"):  # the run cannot be resumed against the renderer
        train_student(StudentTrainConfig(**{**config.__dict__, "target": "renderer", "teacher": None, "steps": 41}), progress=False)
