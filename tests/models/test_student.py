"""The MegaPortraits student: shapes, identity conditioning, gradients, learning, enrolment, ONNX export."""

from pathlib import Path

import numpy as np
import pytest
import torch

from models.export import export_avatar_model
from models.megaportraits.student import STUDENT_PRESETS, Student, StudentOutput, student_config


def _student(preset: str = "tiny", *, num_avatars: int = 4, seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student(config=student_config(preset, num_avatars=num_avatars))


def _drivers(batch: int, resolution: int, *, seed: int = 1) -> torch.Tensor:
    """Smooth random pictures (8×8 noise upsampled): learnable, unlike per-pixel noise."""
    coarse = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)


@pytest.mark.parametrize(("preset", "batch"), [("tiny", 3), ("cpu256", 1)])
def test_output_shapes_and_ranges(preset: str, batch: int) -> None:
    model = _student(preset).eval()
    resolution = STUDENT_PRESETS[preset].resolution
    with torch.no_grad():
        out = model(_drivers(batch, resolution), torch.arange(batch) % model.num_avatars)
    assert isinstance(out, StudentOutput)
    assert out.rgb.shape == (batch, 3, resolution, resolution)
    assert out.alpha.shape == (batch, 1, resolution, resolution)
    for tensor in out:
        assert torch.isfinite(tensor).all() and tensor.min() >= 0 and tensor.max() <= 1


def test_avatar_index_selects_identity_and_batches_are_independent() -> None:
    model = _student().eval()
    drivers = _drivers(4, 64)
    avatars = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        same_driver = model(drivers[:1].expand(4, -1, -1, -1), torch.arange(4))
        batched = model(drivers, avatars)
        singles = [model(drivers[i : i + 1], avatars[i : i + 1]) for i in range(4)]
    for i in range(1, 4):
        assert not torch.allclose(same_driver.rgb[0], same_driver.rgb[i], atol=1e-4)
    for i, single in enumerate(singles):
        torch.testing.assert_close(batched.rgb[i : i + 1], single.rgb, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched.alpha[i : i + 1], single.alpha, atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_parameter_and_only_used_identities() -> None:
    model = _student(num_avatars=5)
    out = model(_drivers(2, 64), torch.tensor([1, 3]))
    (out.rgb.mean() + out.alpha.mean()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        if name != "identity":
            assert parameter.grad.abs().sum() > 0, name
    row_norms = model.identity.grad.flatten(1).abs().sum(dim=1)  # N×C_id×S×S -> N
    assert (row_norms[[1, 3]] > 0).all()
    assert (row_norms[[0, 2, 4]] == 0).all()
    assert model.identity_parameters() == [model.identity]


def test_a_few_adam_steps_lower_the_l1_loss() -> None:
    model = _student(num_avatars=2)
    drivers = _drivers(2, 64)
    avatars = torch.tensor([0, 1])
    # A fixed target that depends on the driver (its grey level) and on the avatar (its tint).
    tints = torch.tensor([[0.9, 0.3, 0.2], [0.2, 0.4, 0.9]])[:, :, None, None]  # 2×3 -> 2×3×1×1
    target = 0.5 * drivers.mean(dim=1, keepdim=True) + 0.5 * tints
    target_alpha = (drivers.mean(dim=1, keepdim=True) > 0.5).float()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_now() -> torch.Tensor:
        out = model(drivers, avatars)
        return (out.rgb - target).abs().mean() + (out.alpha - target_alpha).abs().mean()

    with torch.no_grad():
        initial = loss_now().item()
    for _ in range(30):
        optimiser.zero_grad()
        loss_now().backward()
        optimiser.step()
    with torch.no_grad():
        final = loss_now().item()
    assert final < 0.7 * initial, (initial, final)


def test_add_avatars_appends_working_identities() -> None:
    model = _student(num_avatars=3).eval()
    before = model.identity.detach().clone()
    model.add_avatars(2)
    assert model.num_avatars == 5 and model.config.num_avatars == 5
    assert model.identity.shape[0] == 5
    torch.testing.assert_close(model.identity[:3].detach(), before)
    assert not torch.equal(model.identity[3], model.identity[4])
    with torch.no_grad():
        out = model(_drivers(2, 64), torch.tensor([3, 4]))
    assert out.rgb.shape == (2, 3, 64, 64) and torch.isfinite(out.rgb).all()
    assert model.identity_parameters() == [model.identity]


def test_student_config_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown preset 'x' \(known: tiny, cpu256"):
        student_config("x", num_avatars=1)
    with pytest.raises(ValueError, match="num_avatars"):
        student_config("tiny", num_avatars=0)
    assert student_config("cpu256", num_avatars=8).num_avatars == 8


def test_onnx_export_parity_and_mixed_batch(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _student(num_avatars=4).eval()
    report = export_avatar_model(
        model,
        out_path=tmp_path / "student.onnx",
        resolution=(64, 64),
        avatar_names=["ada", "bo", "cy", "di"],
        command="tests/models/test_student.py",
        config={"preset": "tiny"},
    )
    assert report.max_abs_error < 1e-4
    session = ort.InferenceSession(str(report.model_path), providers=["CPUExecutionProvider"])
    drivers = _drivers(3, 64, seed=7)
    avatars = torch.tensor([3, 0, 3])
    rgb, alpha = session.run(["rgb", "alpha"], {"driver": drivers.numpy(), "avatar": avatars.numpy()})
    with torch.no_grad():
        expected = model(drivers, avatars)
    assert rgb.shape == (3, 3, 64, 64) and alpha.shape == (3, 1, 64, 64)
    np.testing.assert_allclose(rgb, expected.rgb.numpy(), atol=1e-4)
    np.testing.assert_allclose(alpha, expected.alpha.numpy(), atol=1e-4)
