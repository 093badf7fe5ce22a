"""The fp16 export (models/export.py ``precision="fp16"``): fp16 weights and arithmetic behind float32 inputs and
outputs, so the engine serves it unchanged; checked against PyTorch on ONNX Runtime's CPU provider (the GPU providers,
where fp16 pays, are not on this machine)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from models.export import export_avatar_model
from models.megaportraits.student import Student, student_config
from server.engine import Engine

FP16_PARITY = 0.05  # fp16 arithmetic on [0, 1] pictures (measured about 1e-2 on the tiny student)


def graph_types(path: Path) -> tuple[set[int], dict[int, int]]:
    """(element types of the graph's inputs and outputs, element type of its weights -> how many values)."""
    graph = onnx.load(str(path)).graph
    edges = {value.type.tensor_type.elem_type for value in [*graph.input, *graph.output]}
    weights: dict[int, int] = {}
    for initializer in graph.initializer:
        weights[initializer.data_type] = weights.get(initializer.data_type, 0) + int(np.prod(initializer.dims))
    return edges, weights


def test_an_fp16_export_computes_in_fp16_behind_float32_inputs_and_the_engine_serves_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = Student(config=student_config("tiny", num_avatars=3))
    reports = {
        precision: export_avatar_model(
            student,
            out_path=tmp_path / precision / "student.onnx",
            resolution=(64, 64),
            avatar_names=["ada", "bo", "cy"],
            command="tests/models/test_export_fp16.py",
            config={"preset": "tiny"},
            precision=precision,
        )
        for precision in ("fp32", "fp16")
    }
    half = reports["fp16"]
    assert half.max_abs_error < FP16_PARITY and reports["fp32"].max_abs_error < 1e-4
    assert json.loads(half.sidecar_path.read_text())["precision"] == "fp16"
    edges, weights = graph_types(half.model_path)
    assert edges == {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}  # driver, rgb, alpha float32; avatar int64
    float_weights = weights.get(onnx.TensorProto.FLOAT16, 0) + weights.get(onnx.TensorProto.FLOAT, 0)
    assert weights.get(onnx.TensorProto.FLOAT16, 0) > 0.9 * float_weights  # (a few constants may stay float32)
    driver = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    avatars = np.array([0, 2])
    fp16, fp32 = (Engine(model_path=report.model_path).run(driver, avatars) for report in (half, reports["fp32"]))
    assert fp16.rgb.dtype == np.float32 and fp16.rgb.shape == (2, 3, 64, 64)
    assert np.abs(fp16.rgb - fp32.rgb).max() < FP16_PARITY and np.abs(fp16.alpha - fp32.alpha).max() < FP16_PARITY


def test_an_unknown_precision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision"):
        export_avatar_model(
            Student(config=student_config("tiny", num_avatars=1)),
            out_path=tmp_path / "student.onnx",
            resolution=(64, 64),
            avatar_names=["ada"],
            command="tests",
            config={},
            precision="int4",
        )
    assert not any(tmp_path.iterdir())
