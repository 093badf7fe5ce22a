"""The evaluation reads an exported student's card with contract's checked reader (the server's): the graph of
each driver kind, its input name, and a one-line ValueError for a graph that is not the card's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models.evaluation import OnnxAvatarModel


def test_the_evaluation_reads_the_card_of_each_driver_kind(multi_driver_model_path: Path, tmp_path: Path) -> None:
    for driver, input_name, shape in (
        ("image", "driver", (1, 3, 64, 64)),
        ("arkit", "curves", (1, 61)),
        ("landmarks", "landmarks", (1, 68, 2)),
    ):
        model = OnnxAvatarModel(multi_driver_model_path, driver=driver)
        assert model.resolution == 64 and model.avatar_names == ("ada", "bo", "cy") and model.input_name == input_name
        output = model(torch.full(shape, 0.5), torch.zeros(1, dtype=torch.int64))
        assert output.rgb.shape == (1, 3, 64, 64) and output.alpha.shape == (1, 1, 64, 64)
    copy = tmp_path / multi_driver_model_path.name
    for path in multi_driver_model_path.parent.iterdir():
        shutil.copyfile(path, tmp_path / path.name)
    with open(tmp_path / "student.arkit.onnx", "ab") as handle:
        handle.write(b"\0")  # not the graph the card's digest names
    with pytest.raises(ValueError, match="SHA-256 differs"):
        OnnxAvatarModel(copy, driver="image")
