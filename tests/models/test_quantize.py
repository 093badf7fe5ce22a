"""`megalive-train quantize`: an int8 copy of an exported student that the server loads, close to the fp32 model, with
its card updated; bad input refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.cli import main
from models.export import current_command
from server.engine import Engine


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp32") / "student.onnx"
    assert main(["export", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(out)]) == 0
    return out


def test_an_int8_copy_is_served_close_to_the_fp32_model(exported: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    assert main(["quantize", "--model", str(exported), "--data", str(tiny_dataset), "--out", str(out), "--calibration", "8"]) == 0
    model = out / exported.name
    card = json.loads(model.with_suffix(".json").read_text())
    fp32_card = json.loads(exported.with_suffix(".json").read_text())
    assert card["precision"] == "int8" and card["quantization"]["calibration_frames"] == 8
    assert card["command"] == f"{fp32_card['command']} && {current_command()}"  # this command appended to the model's
    graph = onnx.load(str(model)).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    assert any(initializer.data_type == onnx.TensorProto.INT8 for initializer in graph.initializer)
    # Every other file of the model came along (the engine checks each digest the card names).
    copied = {path.name for path in exported.parent.iterdir()} - {exported.name, exported.with_suffix(".json").name}
    assert copied <= {path.name for path in out.iterdir()}
    fp32, int8 = Engine(model_path=exported), Engine(model_path=model)
    driver = np.random.default_rng(0).random((2, 3, *fp32.resolution), dtype=np.float32)
    avatars = np.array([0, 1], np.int64)
    difference = np.abs(fp32.run(driver, avatars).rgb - int8.run(driver, avatars).rgb)
    assert 0 < float(difference.mean()) < 0.05  # int8 changes the picture, a little


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(
    exported: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(*options: str) -> str:
        assert main(["quantize", *options]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    model, data = ("--model", str(exported)), ("--data", str(tiny_dataset))
    assert "the model's own folder" in refused(*model, *data, "--out", str(exported.parent))
    assert "no driver_rgba.npy" in refused(*model, "--data", str(tmp_path), "--out", str(tmp_path / "a"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "driver_rgba.npy").write_bytes(b"not an array")
    assert "is unreadable" in refused(*model, "--data", str(broken), "--out", str(tmp_path / "a"))
    assert "model file not found" in refused("--model", str(tmp_path / "none.onnx"), *data, "--out", str(tmp_path / "b"))
    assert main(["quantize", *model, *data, "--out", str(tmp_path / "c"), "--dry-run"]) == 0
    drivers = len(np.load(tiny_dataset / "driver_rgba.npy", mmap_mode="r"))
    assert json.loads(capsys.readouterr().out)["calibration_frames"] == min(32, drivers)
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c"))
    int8 = tmp_path / "int8"
    assert main(["quantize", *model, *data, "--out", str(int8), "--calibration", "4"]) == 0
    capsys.readouterr()
    assert "is int8: quantise its fp32 export" in refused("--model", str(int8 / exported.name), *data, "--out", str(tmp_path / "d"))
