"""The reenactment benchmark (`megalive-train eval`) and its parameter regressor (`megalive-train regressor`):
the scoring arithmetic checked with copy models, a teacher checkpoint evaluated end to end, refusals in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from models.cli import main
from models.data.heads import SyntheticHeads, neutral_motion, sample_identities, sample_motions
from models.evaluation import AvatarOutput, EvalConfig, evaluate
from models.nets.parameter_regressor import IDENTITY_FIELDS, RegressedParameters, identity_features, load_regressor, parameter_errors
from models.training.augment import gaussian_blur
from models.training.common import TrainingError
from models.training.train_regressor import RegressorTrainConfig, train_regressor

RESOLUTION = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny regressor trained for 120 steps, and the same one untrained (0 learning rate)."""
    folder = tmp_path_factory.mktemp("regressor")
    small = dict(renders=256, render_resolution=RESOLUTION, batch_size=32, held_out=64)
    train_regressor(RegressorTrainConfig(out=str(folder / "trained.pt"), steps=120, **small), progress=False)
    train_regressor(RegressorTrainConfig(out=str(folder / "untrained.pt"), steps=1, learning_rate=0.0, **small), progress=False)
    return folder / "trained.pt", folder / "untrained.pt"


def test_parameter_errors_are_zero_at_the_truth_and_in_degrees_and_prior_units() -> None:
    generator = torch.Generator().manual_seed(0)
    motion = sample_motions(4, generator=generator)
    identity = torch.randn(4, len(identity_features(sample_identities(1, generator=generator))[0]))
    truth = RegressedParameters(
        pose=torch.stack([motion.yaw, motion.pitch, motion.roll], dim=1), expression=motion.expression.clone(), identity=identity.clone()
    )
    assert parameter_errors(truth, motion, identity).abs().max() == 0
    off = RegressedParameters(
        pose=truth.pose + torch.tensor([math.radians(3.0), 0.0, 0.0]), expression=truth.expression + 0.1, identity=identity + 0.5
    )
    errors = parameter_errors(off, motion, identity)  # 3° on one of three angles; 0.1 on every control; 0.5 σ on every feature
    assert torch.allclose(errors, torch.tensor([[1.0, 0.1, 0.5]]).expand(4, 3), atol=1e-4)
    assert len(IDENTITY_FIELDS) == 29 and identity.shape[1] == 37  # 21 shape values, 4 colours × 3, 4 hair values


def test_blur_keeps_an_image_at_sigma_zero_and_softens_it_otherwise() -> None:
    image = torch.rand(2, 3, 16, 16)
    kept = gaussian_blur(image, torch.zeros(2))
    assert torch.allclose(kept, image, atol=1e-5)
    blurred = gaussian_blur(image, torch.tensor([0.0, 1.5]))
    assert torch.allclose(blurred[0], image[0], atol=1e-5) and blurred[1].std() < 0.7 * image[1].std()


def test_the_regressor_learns_and_its_checkpoint_round_trips(regressor: tuple[Path, Path], tmp_path: Path) -> None:
    trained_path, untrained_path = regressor
    trained, untrained = torch.load(trained_path, weights_only=True), torch.load(untrained_path, weights_only=True)
    held_out, clips = trained["held_out"], trained["held_out_clips"]
    assert held_out["identity"] < 0.95 * untrained["held_out"]["identity"]
    assert clips["rotation_deg"] < 0.9 * untrained["held_out_clips"]["rotation_deg"]
    # Beside each ARKit error, answering zero on the same renders (sparse random controls; clip frames move few at a time).
    # After 120 steps its ARKit answer is about as good as zero on random motions (a squared loss answers the mean of
    # these sparse controls: far worse, 0.2); trained for real it beats zero (the default: 0.0088 against 0.0260 on clips).
    assert 0.1 < held_out["expression_zero_answer"] < 0.2 and 0 < clips["expression_zero_answer"] < 0.1
    assert held_out["expression"] < 1.1 * held_out["expression_zero_answer"]
    assert held_out["expression_given_landmarks"] < 1.1 * held_out["expression_zero_answer"]
    model = load_regressor(trained_path)
    generator = torch.Generator().manual_seed(1)
    identity = sample_identities(2, generator=generator)
    render = SyntheticHeads(resolution=128).render(identity, neutral_motion(2))
    with torch.inference_mode():
        predicted = model(render.rgb)  # any size in; crops placed by its own landmarks
        given = model(render.rgb, render.landmarks)  # or by the landmarks given
    assert predicted.pose.shape == (2, 3) and predicted.expression.shape == (2, 52) and predicted.identity.shape == (2, 37)
    assert predicted.landmarks is not None and predicted.landmarks.shape == (2, 68, 2)
    assert 0 <= float(given.expression.min()) and float(given.expression.max()) <= 1  # controls live in [0, 1]
    assert model.standardise(identity).shape == (2, 37)
    other = tmp_path / "other.pt"
    torch.save({"kind": "something-else"}, other)
    with pytest.raises(TrainingError, match="not a parameter-regressor checkpoint"):
        load_regressor(other)
    earlier = {key: value for key, value in torch.load(trained_path, weights_only=True).items() if key != "regressor_design"}
    torch.save(earlier, tmp_path / "earlier.pt")  # a checkpoint of the first design (whole image only) has no design
    with pytest.raises(TrainingError, match=r"design 1 .*train a new one with `megalive-train regressor`$"):
        load_regressor(tmp_path / "earlier.pt")


class _CopyModel:
    """Outputs a copy of the source image (its avatar's neutral frame) or of the driving image:
    the benchmark must score them exactly as its own baselines."""

    kind, draws_background, resolution = "student", True, RESOLUTION

    def __init__(self, copy: str) -> None:
        self.copy = copy

    def set_sources(self, sources: torch.Tensor) -> None:
        self.sources = sources

    def __call__(self, signal: torch.Tensor, avatar: torch.Tensor) -> AvatarOutput:
        rgb = self.sources[avatar] if self.copy == "source" else signal
        return AvatarOutput(rgb=rgb, alpha=torch.ones_like(rgb[:, :1]))


def test_copy_models_score_as_the_baselines(tiny_dataset: Path) -> None:
    config = EvalConfig(model="copy", data=str(tiny_dataset), clips=2, frames_per_clip=4)
    source = evaluate(config, model=_CopyModel("source"), progress=False)
    assert source.cross.model_output.psnr == pytest.approx(source.cross.source_copy.psnr)
    assert source.self_reenactment.model_output.ssim == pytest.approx(source.self_reenactment.source_copy.ssim)
    driver = evaluate(config, model=_CopyModel("driver"), progress=False)
    assert driver.cross.model_output.psnr == pytest.approx(driver.cross.driver_copy.psnr)
    assert driver.self_reenactment.model_output.psnr == pytest.approx(100.0)  # the self driver is the target
    assert driver.cross.source_copy == source.cross.source_copy  # the same pairs for every model


def test_a_teacher_checkpoint_is_benchmarked_on_held_out_identities(
    teacher: Path, regressor: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                str(teacher),
                "--regressor",
                str(regressor[0]),
                "--out",
                str(out),
                "--clips",
                "2",
                "--frames",
                "3",
                "--sources",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "teacher" in printed and "cross: driver copy" in printed and "ARKit error of answering zero" in printed
    report = json.loads((out / "eval-clips.json").read_text())
    assert report["model_kind"] == "teacher" and report["resolution"] == RESOLUTION and report["sources"] == "2 held-out identities"
    output = report["cross"]["model_output"]
    assert output["psnr"] is None and 0 < output["foreground_psnr"] < 100  # no background: foreground figures only
    for figures in (output, report["cross"]["source_copy"], report["cross"]["driver_copy"], report["ground_truth"]):
        assert all(
            math.isfinite(figures[key]) and figures[key] >= 0 for key in ("rotation_error_deg", "expression_error", "identity_error")
        )
    assert report["cross"]["source_copy"]["psnr"] is not None
    assert 0 < report["expression_zero_answer"] < 0.2 and set(report["networks"].values()) == {"active"}
    for figures in (output, report["cross"]["source_copy"], report["cross"]["driver_copy"]):  # the face-aware figures, every row
        assert 0 < figures["eye_psnr"] < 100 and 0 < figures["mouth_psnr"] < 100 and figures["perceptual_distance"] > 0
        assert -1 <= figures["csim_dlib_target"] <= 1 and -1 <= figures["csim_dlib_source"] <= 1 and figures["fd_effnet"] > 0
    truth = report["ground_truth"]
    assert truth["eye_psnr"] == 100 and truth["perceptual_distance"] == 0 and truth["csim_dlib_target"] == pytest.approx(1, abs=1e-5)
    assert "fewer samples than dimensions" in report["notes"][0]
    assert (out / "contact-sheet-clips.png").is_file()

    # Side by side with a second evaluation of the same pairs; a report of other pairs is refused.
    again = tmp_path / "again"
    assert main(["eval", "--model", str(teacher), "--out", str(again), "--clips", "2", "--frames", "3", "--sources", "2"]) == 0
    capsys.readouterr()
    assert main(["eval-table", str(out / "eval-clips.json"), str(again / "eval-clips.json"), "--out", str(tmp_path / "t.md")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == (tmp_path / "t.md").read_text().strip().splitlines()
    assert len(lines) == 2 + 4 + 3 + 1 and lines[2].startswith("| cross: teacher (checkpoint.pt) | 64 | — | — |")
    assert lines[-2].startswith("| ground truth (regressor floor) | 64 |")
    zero_row = [cell.strip() for cell in lines[-1].strip("|").split("|")]  # only the ARKit cell filled
    assert zero_row[0] == "baseline: ARKit all zero" and float(zero_row[-2]) == pytest.approx(report["expression_zero_answer"], abs=1e-4)
    assert set(zero_row[2:-2]) == set(zero_row[-1:]) == {"—"}
    other = tmp_path / "other"
    assert main(["eval", "--model", str(teacher), "--out", str(other), "--clips", "1", "--frames", "3", "--sources", "2"]) == 0
    capsys.readouterr()
    assert main(["eval-table", str(out / "eval-clips.json"), str(other / "eval-clips.json")]) == 2
    assert "other pairs" in capsys.readouterr().err
    # Two models whose files share a name are told apart by --label, one per report.
    pair = [str(out / "eval-clips.json"), str(again / "eval-clips.json")]
    assert main(["eval-table", *pair, "--label", "previous", "--label", "new"]) == 0
    labelled = capsys.readouterr().out.strip().splitlines()
    assert labelled[2].startswith("| cross: previous | 64 |") and labelled[4].startswith("| cross: new | 64 |")
    assert main(["eval-table", *pair, "--label", "only one"]) == 2
    assert "one per report" in capsys.readouterr().err


def test_bad_benchmark_input_gets_one_line(
    teacher: Path, multi_driver_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(*argv: str) -> str:
        assert main(["eval", *argv, "--out", str(tmp_path / "eval"), "--clips", "1", "--frames", "2"]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("megalive-train eval: ") and "\n" not in error
        return error

    assert "images only" in refused("--model", str(teacher), "--driver", "arkit")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert "unreadable" in refused("--model", str(garbage))
    assert "expected an exported student" in refused("--model", str(tmp_path / "model.bin"))
    assert "not a parameter-regressor" in refused("--model", str(teacher), "--regressor", str(teacher))
    assert "locked to its avatars" in refused("--model", str(multi_driver_model_path))
