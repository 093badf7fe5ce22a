"""The MegaPortraits student: shapes, identity conditioning, gradients, learning, enrolment, ONNX export."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoints import student_from_checkpoint
from models.export import export_avatar_model
from models.megaportraits.student import STUDENT_PRESETS, Student, StudentOutput, student_config
from models.training.common import TrainingError
from models.training.train_student import initial_weights


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


def test_cpu512_reads_the_driver_at_half_size_and_draws_512() -> None:
    model = _student("cpu512", num_avatars=1).eval()
    assert model.config.decoder_resolutions() == (16, 32, 64, 128)  # cpu256's, on the driver read at 256
    with torch.no_grad():
        out = model(_drivers(1, 512), torch.zeros(1, dtype=torch.long))
    assert out.rgb.shape == (1, 3, 512, 512) and out.alpha.shape == (1, 1, 512, 512)
    with pytest.raises(ValueError, match="driver_downsample"):
        dataclasses.replace(STUDENT_PRESETS["cpu512"], refine_channels=0)


def test_a_half_size_student_starts_the_upsampling_one(tiny_run: Path, tiny_dataset: Path) -> None:
    """--init: a tiny (64 px) run's weights fill a 128 px student reading its driver at 64 px, all but the upsampling
    stage; its encoder then sees a 128 px driver exactly as the 64 px student sees the driver area-downsampled."""
    checkpoint = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    names = list(checkpoint["avatar_names"])
    small = student_from_checkpoint(checkpoint).eval()
    double = Student(config=dataclasses.replace(small.config, resolution=128, driver_downsample=2, refine_channels=8)).eval()
    fresh = initial_weights(double, None, tiny_run / "checkpoint.pt", avatar_names=names)
    assert fresh == ["decoder.refine.weight", "decoder.refine.bias"]
    driver = _drivers(2, 128)
    with torch.no_grad():
        for got, want in zip(double.encoder(driver), small.encoder(torch.nn.functional.avg_pool2d(driver, 2)), strict=True):
            torch.testing.assert_close(got, want)
        assert double(driver, torch.tensor([0, 1])).rgb.shape == (2, 3, 128, 128)
    with pytest.raises(TrainingError, match="avatars"):
        initial_weights(double, None, tiny_run / "checkpoint.pt", avatar_names=names[::-1])
