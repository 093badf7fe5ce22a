"""`megalive-train` option checking: the configs check their own ranges, the CLI turns a refusal into one line and exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from models.cli import main
from models.training.common import TrainingError
from models.training.train_student import StudentTrainConfig, check_student_config


def _refused(capsys: pytest.CaptureFixture[str], command: str, *argv: str) -> str:
    assert main([command, *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"megalive-train {command}: ") and error.count("\n") == 1, error
    return error


@pytest.mark.parametrize(
    ("jitter", "warp", "option"),
    [(-0.1, 0.04, "--jitter"), (1.5, 0.04, "--jitter"), (math.nan, 0.04, "--jitter"), (0.3, -0.01, "--warp"), (0.3, 0.25, "--warp")],
)
def test_the_student_config_checks_jitter_and_warp(jitter: float, warp: float, option: str) -> None:
    with pytest.raises(TrainingError, match=option):
        check_student_config(StudentTrainConfig(data="d", run_dir="r", colour_jitter=jitter, warp=warp))


def test_student_refuses_jitter_and_warp_out_of_range(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ("--data", str(tiny_dataset), "--run", str(tmp_path / "run"), "--preset", "tiny", "--dry-run")
    assert "--jitter must be in [0, 1]" in _refused(capsys, "student", *common, "--jitter", "1.5")
    assert "--warp must be in [0, 0.2]" in _refused(capsys, "student", *common, "--warp", "0.3")
    assert not (tmp_path / "run").exists()
    assert main(["student", *common, "--jitter", "1", "--warp", "0.2"]) == 0  # the ends of the ranges are valid
    train = json.loads(capsys.readouterr().out)["train"]
    assert (train["colour_jitter"], train["warp"]) == (1.0, 0.2)


def test_prepare_ranges_come_from_its_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    # The config checks the ranges; the refusal names the option the user typed.
    assert "--resolution must be in [32, 1024]" in _refused(capsys, "prepare", src, dst, "--resolution", "8")
    assert "--min-face-fraction must be in [0, 1]" in _refused(capsys, "prepare", src, dst, "--min-face-fraction", "2")
    assert "--every must be at least 1" in _refused(capsys, "prepare", src, dst, "--every", "0")
    assert "--smoothing must be in [0, 10]" in _refused(capsys, "prepare", src, dst, "--smoothing", "11")
    assert "--workers must be in [1, 64]" in _refused(capsys, "prepare", src, dst, "--workers", "0")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_synth_and_contract_model_refuse_out_of_range_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x")
    assert "--drivers must be in [1, 100000]" in _refused(capsys, "synth", out, "--drivers", "0")
    assert "--pairs must be at least 1" in _refused(capsys, "synth", out, "--pairs", "0")
    assert "multiple of 4" in _refused(capsys, "contract-model", "--out", f"{out}.onnx", "--resolution", "30")
    assert "--avatars must be in [1, 1024]" in _refused(capsys, "contract-model", "--out", f"{out}.onnx", "--avatars", "0")
    assert list(tmp_path.iterdir()) == []


def test_base_and_landmark_solver_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--steps must be at least 1" in _refused(capsys, "base", "--run", str(tmp_path / "b"), "--steps", "0", "--dry-run")
    assert "colour jitter strength" in _refused(capsys, "base", "--run", str(tmp_path / "b"), "--jitter", "2", "--dry-run")
    solver = ("--out", str(tmp_path / "s" / "solver.pt"), "--dry-run")
    assert "--steps ≥ 1, --batch ≥ 1" in _refused(capsys, "landmark-solver", *solver, "--batch", "0")
    assert "--motions ≥ --batch" in _refused(capsys, "landmark-solver", *solver, "--motions", "10")
    assert not (tmp_path / "b").exists() and not (tmp_path / "s").exists()


def test_export_dry_run_describes_what_it_would_write(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(out), "--dry-run"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert {key: described[key] for key in ("out", "resolution", "avatars", "step", "drivers")} == {
        "out": str(out), "resolution": 64, "avatars": ["Ada", "Basil", "Cleo"], "step": 100, "drivers": ["image", "arkit"]
    }  # fmt: skip
    assert described["capture"]["arkit"] == {"design": "puppet", "puppet": {"render_resolution": 24, "resolution": 64}}
    assert list(tmp_path.iterdir()) == []
    assert "checkpoint not found" in _refused(capsys, "export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(out))


def test_export_precision_fp16_writes_an_fp16_graph_behind_float32_edges(tiny_run: Path, tmp_path: Path) -> None:
    import onnx

    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(out), "--no-capture", "--precision", "fp16"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["precision"] == "fp16"
    graph = onnx.load(str(out)).graph
    assert {value.type.tensor_type.elem_type for value in [*graph.input, *graph.output]} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    float_weights = [i.data_type for i in graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert float_weights.count(onnx.TensorProto.FLOAT16) > float_weights.count(onnx.TensorProto.FLOAT)
