"""The high-resolution enhancer (DESIGN §4.2): shapes per preset, its start as bicubic interpolation, a tiny training
run behind a random tiny teacher with exact resume, the benchmark's files and bicubic baseline, and the refusals
(another teacher preset when resuming or evaluating, a teacher that is not a base model) with one line and exit 2."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.blocks import on_white
from models.checkpoints import BASE_KIND, load_checkpoint, save_checkpoint, state_digest
from models.cli import main
from models.data.heads import SyntheticHeads, neutral_motion
from models.enhancer_evaluation import REPORT_NAME, SHEET_NAME, TABLE_NAME, held_out_draws, render_pairs
from models.evaluation import HELD_OUT_SEED
from models.megaportraits import enhancer as enhancer_module
from models.megaportraits.base import BaseModel, base_config
from models.megaportraits.enhancer import ENHANCER_PRESETS, Enhancer, EnhancerConfig, enhancer_config, parameter_count
from models.nets.weights import PERCEPTUAL_NETWORK
from models.training.enhancer_settings import EnhancerEvalConfig, EnhancerTrainConfig
from models.training.train_base import BaseTrainConfig
from models.training.train_enhancer import train_enhancer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(preset="tiny", steps=3, batch_size=2, identities=8, workers=0, log_every=1, checkpoint_every=3)


def random_teacher(path: Path, preset: str, *, seed: int = 0) -> Path:
    """A base-model checkpoint of random weights, saved as the base trainer saves one (kind, configs, weights)."""
    torch.manual_seed(seed)
    config = base_config(preset)
    save_checkpoint(
        {
            "generator": BaseModel(config=config).state_dict(),
            "discriminator": {},
            "step": 0,
            "model_config": asdict(config),
            "train_config": asdict(BaseTrainConfig(run_dir=str(path.parent), preset=preset)),
            "resolved_config": {},
        },
        path,
        kind=BASE_KIND,
    )
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("teachers")
    return {preset: random_teacher(folder / f"{preset}.pt", preset) for preset in ("tiny", "cpu128")}


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _step_losses(run: Path, step: int) -> dict[str, float]:
    (line,) = [entry for entry in _log(run) if entry.get("step") == step and "event" not in entry]
    return {key: value for key, value in line.items() if key != "samples_per_second"}


def _refused(capsys: pytest.CaptureFixture[str], command: str, *argv: str) -> str:
    assert main([command, *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"megalive-train {command}: ") and error.count("\n") == 1, error
    return error


# -- the network --------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(ENHANCER_PRESETS))
def test_each_preset_doubles_its_teachers_resolution(preset: str) -> None:
    config = enhancer_config(preset)
    side = base_config(preset).resolution
    assert (config.input_resolution, config.output_resolution) == (side, 2 * side)
    device = "cpu" if side <= 128 else "meta"  # the paper sizes on the meta device: shapes without the arithmetic
    with torch.device(device):
        model = Enhancer(config=config)
        output = model(torch.rand(2, 3, side, side), torch.rand(2, 1, side, side))
    assert output.rgb.shape == (2, 3, 2 * side, 2 * side) and output.alpha.shape == (2, 1, 2 * side, 2 * side)
    # The module docstring's table.
    row = next(line.split() for line in enhancer_module.__doc__.splitlines() if line.strip().startswith(f"{preset} "))
    assert int(row[-1].replace(",", "")) == parameter_count(model)


def test_it_starts_as_bicubic_interpolation() -> None:
    torch.manual_seed(0)
    model = Enhancer(config=enhancer_config("tiny"))
    rgb, alpha = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    output = model(rgb, alpha)
    assert torch.equal(output.rgb, F.interpolate(rgb, scale_factor=2.0, mode="bicubic", align_corners=False))
    assert torch.equal(output.alpha, F.interpolate(alpha, scale_factor=2.0, mode="bicubic", align_corners=False))
    with pytest.raises(ValueError, match="no enhancer"):
        enhancer_config("huge")
    with pytest.raises(ValueError, match="power of two"):
        EnhancerConfig(teacher_preset="tiny", input_resolution=48, channels=8, blocks=1, high_channels=8, high_blocks=1)


# -- training -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(teachers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 3-step tiny run twice: straight through, and stopped after step 1 then resumed."""
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    teacher = str(teachers["tiny"])
    summary = train_enhancer(EnhancerTrainConfig(run_dir=str(straight), teacher=teacher, **TINY), progress=False)
    assert summary.steps == 3 and summary.seconds_per_step > 0
    stopped = train_enhancer(EnhancerTrainConfig(run_dir=str(resumed), teacher=teacher, **TINY), progress=False, stop_at=1)
    assert stopped.steps == 1 and load_checkpoint(resumed / "checkpoint.pt")["step"] == 1
    train_enhancer(EnhancerTrainConfig(run_dir=str(resumed), teacher=teacher, **TINY), progress=False)
    return straight, resumed


def test_a_run_writes_its_config_checkpoint_log_and_samples(runs: tuple[Path, Path], teachers: dict[str, Path]) -> None:
    run, _ = runs
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["output_resolution"] == 128 and config["data"]["resolution"] == 128
    assert config["teacher"]["preset"] == "tiny" and config["teacher"]["frozen"]
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert checkpoint["kind"] == "megaportraits-enhancer" and checkpoint["step"] == 3
    teacher = load_checkpoint(teachers["tiny"])
    assert checkpoint["teacher"] == {
        "preset": "tiny",
        "path": str(teachers["tiny"]),
        "digest": state_digest(teacher["generator"]),
        "resolution": 64,
    }
    entries = [entry for entry in _log(run) if "event" not in entry]
    assert [entry["step"] for entry in entries] == [1, 2, 3]
    assert all(entry["enhancer"] == entry["enhancer"] and entry["l1_bicubic"] > 0 for entry in entries)  # finite
    assert (run / "samples.png").stat().st_size > 0
    # The teacher stayed frozen: the run changed no weight of its file.
    assert state_digest(load_checkpoint(teachers["tiny"])["generator"]) == checkpoint["teacher"]["digest"]


def test_resume_continues_exactly_as_the_uninterrupted_run(runs: tuple[Path, Path]) -> None:
    straight, resumed = runs
    assert _step_losses(resumed, 3) == _step_losses(straight, 3)
    assert load_checkpoint(resumed / "checkpoint.pt")["digest"] == load_checkpoint(straight / "checkpoint.pt")["digest"]
    starts = [entry for entry in _log(resumed) if entry.get("event") == "start"]
    assert [(entry["step"], entry["resumed"]) for entry in starts] == [(0, False), (1, True)]


def test_resuming_behind_another_teacher_preset_is_refused_and_nothing_is_overwritten(
    runs: tuple[Path, Path], teachers: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight, _ = runs
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(straight / "checkpoint.pt", run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    error = _refused(capsys, "enhancer", "--teacher", str(teachers["cpu128"]), "--run", str(run), "--steps", "3")
    assert "teacher preset 'tiny'" in error and "'cpu128'" in error
    assert (run / "checkpoint.pt").read_bytes() == before and sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]
    # A teacher that is not a base model, and one of another preset than --preset.
    error = _refused(capsys, "enhancer", "--teacher", str(straight / "checkpoint.pt"), "--run", str(tmp_path / "new"))
    assert "not a MegaPortraits base-model checkpoint" in error and "megaportraits-enhancer" in error
    error = _refused(capsys, "enhancer", "--teacher", str(teachers["tiny"]), "--run", str(tmp_path / "new"), "--preset", "cpu128")
    assert "'tiny', not 'cpu128'" in error
    assert "--steps must be at least 1" in _refused(capsys, "enhancer", "--teacher", str(teachers["tiny"]), "--run", "x", "--steps", "0")
    assert not (tmp_path / "new").exists()


def test_dry_run_prints_what_would_run(teachers: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enhancer", "--teacher", str(teachers["cpu128"]), "--run", str(tmp_path / "run"), "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["input_resolution"] == 128 and resolved["model"]["output_resolution"] == 256
    assert resolved["train"]["batch_size"] == 2 and resolved["losses"]["self_driven"]["feature_matching"] == 100
    assert resolved["resume_step"] == 0 and not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["enhancer-eval", "--help"])
    assert exit_info.value.code == 0 and "--enhancer" in capsys.readouterr().out


# -- the benchmark ------------------------------------------------------------------------------------


def test_the_benchmark_writes_its_files_and_its_baseline_is_bicubic(
    runs: tuple[Path, Path], teachers: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = runs
    out = tmp_path / "eval"
    argv = ["--enhancer", str(run / "checkpoint.pt"), "--out", str(out), "--sources", "2", "--clips", "2", "--frames", "2"]
    assert main(["enhancer-eval", *argv, "--batch", "3", "--metric-size", "64"]) == 0
    assert "cross: enhanced" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([REPORT_NAME, TABLE_NAME, SHEET_NAME])
    report = json.loads((out / REPORT_NAME).read_text())
    assert (report["input_resolution"], report["output_resolution"], report["pairs"]) == (64, 128, 4)
    assert report["teacher_as_trained"] and report["config"]["seed"] == HELD_OUT_SEED
    assert "| cross: teacher + bicubic |" in (out / TABLE_NAME).read_text()
    active = report["networks"][PERCEPTUAL_NETWORK] == "active"
    figures = report["figures"]
    for row in figures.values():
        assert row["psnr"] is None and row["foreground_psnr"] > 0 and row["eye_psnr"] > 0 and row["mouth_psnr"] > 0
        assert (row["perceptual_distance"] is not None) == active

    # The baseline, computed directly: the teacher's output upsampled bicubically, both on white, PSNR against the truth.
    config = EnhancerEvalConfig(enhancer="", out="", sources=2, clips=2, frames_per_clip=2)
    draws = held_out_draws(config)
    heads = SyntheticHeads(resolution=128)
    teacher = BaseModel(config=base_config("tiny"))
    teacher.load_state_dict(load_checkpoint(teachers["tiny"])["generator"])
    teacher.eval()
    with torch.no_grad():
        sources = heads.render(draws.sources, neutral_motion(2)).rgb[draws.source_of]  # 4×3×128×128
        pairs = render_pairs(heads, draws, slice(0, 4))
        output = teacher(F.avg_pool2d(sources, 2), F.avg_pool2d(pairs.cross_driver, 2))
    up = F.interpolate(output.rgb, scale_factor=2.0, mode="bicubic", align_corners=False).clamp(0, 1)
    up_alpha = F.interpolate(output.alpha, scale_factor=2.0, mode="bicubic", align_corners=False).clamp(0, 1)
    squared = (on_white(up, up_alpha) - on_white(pairs.truth.rgb, pairs.truth.alpha)).square().flatten(1).mean(dim=1)
    psnr = float((10 * torch.log10(1 / squared)).mean())
    assert figures["cross: teacher + bicubic"]["foreground_psnr"] == pytest.approx(psnr, abs=1e-4)


def test_an_enhancer_for_another_teacher_preset_is_refused_at_evaluation(
    runs: tuple[Path, Path], teachers: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = runs
    enhancer = str(run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    out = tmp_path / "eval"
    error = _refused(capsys, "enhancer-eval", "--enhancer", enhancer, "--teacher", str(teachers["cpu128"]), "--out", str(out))
    assert "teacher preset 'tiny'" in error and "'cpu128'" in error
    error = _refused(capsys, "enhancer-eval", "--enhancer", enhancer, "--preset", "cpu128", "--out", str(out))
    assert "teacher preset 'tiny', not 'cpu128'" in error
    error = _refused(capsys, "enhancer-eval", "--enhancer", str(teachers["tiny"]), "--out", str(out))
    assert "not a high-resolution enhancer checkpoint" in error
    assert not out.exists() and (run / "checkpoint.pt").read_bytes() == before
    assert main(["enhancer-eval", "--enhancer", enhancer, "--out", str(out), "--dry-run"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["resolution"] == [64, 128] and described["teacher"]["as_trained"] and not out.exists()
