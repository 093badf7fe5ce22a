"""Export writes a model, its adapter graphs and its sidecar as one pair: nothing half-written under a final name, no
temporaries left after a failure, and a kill between the renames leaves files the server refuses instead of serving."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.contract_model import ContractModel, ContractModelConfig
from models.export import ExportReport, ExtraDriver, export_avatar_model
from server.engine import Engine, ModelError, load_model_card

RES = 16


class CurvesDriven(nn.Module):
    """A capture-signal graph for tests: the mean of B×4 curves as a flat grey driver image of the contract model."""

    def __init__(self, *, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, curves: torch.Tensor, avatar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        driver = curves.mean(dim=1).reshape(-1, 1, 1, 1) * torch.ones(1, 3, RES, RES)  # B×4 -> B×3×H×W
        return self.model(driver, avatar)


class Broken(nn.Module):
    def forward(self, curves: torch.Tensor, avatar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("adapter graph failed to trace")


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so only cleanup that a real kill would skip sees it."""


def export(path: Path, *, seed: int, avatars: list[str], adapter: nn.Module | None = None) -> ExportReport:
    model = ContractModel(config=ContractModelConfig(resolution=RES, num_avatars=len(avatars), width=4), seed=seed)
    extra = ExtraDriver(
        kind="arkit", module=adapter or CurvesDriven(model=model), input_name="curves", input_shape=(4,), config={"seed": seed}
    )
    thumbnails = np.full((len(avatars), 8, 8, 3), seed, dtype=np.uint8)
    return export_avatar_model(
        model,
        out_path=path,
        resolution=(RES, RES),
        avatar_names=avatars,
        command=f"test seed {seed}",
        config={"seed": seed},
        extra_drivers=[extra],
        thumbnails=thumbnails,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


FINAL_NAMES = ["student.arkit.onnx", "student.json", "student.onnx", "student.thumbs.npy"]


def test_a_normal_export_round_trips_with_a_digest_per_graph(tmp_path: Path) -> None:
    model = tmp_path / "student.onnx"
    report = export(model, seed=0, avatars=["ada", "bo"])
    assert sorted(p.name for p in tmp_path.iterdir()) == FINAL_NAMES  # no temporaries left
    card = load_model_card(model)
    sidecar = json.loads(report.sidecar_path.read_text())
    assert sidecar["model_sha256"] == sha256(model)
    assert sidecar["adapters"]["arkit"]["model_sha256"] == sha256(tmp_path / "student.arkit.onnx")
    assert card.avatar_names == ("ada", "bo") and card.drivers == ("image", "arkit")
    engine = Engine(model_path=model, max_batch=2)
    assert engine.run(np.full((2, 4), 0.5, np.float32), np.array([0, 1]), kind="arkit").rgb.shape == (2, 3, RES, RES)
    assert len(engine.thumbnails()) == 2


@pytest.mark.parametrize("last_renamed", ["student.onnx", "student.arkit.onnx", "student.thumbs.npy"])
def test_a_kill_between_the_renames_leaves_a_pair_the_server_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, last_renamed: str
) -> None:
    model = tmp_path / "student.onnx"
    export(model, seed=0, avatars=["ada", "bo"])
    before = contents(tmp_path)
    real_replace = os.replace

    def replace_then_die(source: str | Path, target: str | Path) -> None:
        real_replace(source, target)
        if Path(target).name == last_renamed:
            raise Killed

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(Killed):
        export(model, seed=1, avatars=["ada", "bo", "cy"])
    monkeypatch.undo()
    after = contents(tmp_path)
    assert sorted(after) == FINAL_NAMES  # the temporaries not yet renamed were removed on the way out
    assert after["student.onnx"] != before["student.onnx"] and after["student.json"] == before["student.json"]  # mixed pair
    for load in (load_model_card, lambda path: Engine(model_path=path)):
        with pytest.raises(ModelError, match=r"student\.onnx does not match its sidecar student\.json") as refused:
            load(model)
        assert "re-run megalive-train export" in str(refused.value) and "\n" not in str(refused.value)
    export(model, seed=1, avatars=["ada", "bo", "cy"])  # re-running export mends it
    assert load_model_card(model).avatar_names == ("ada", "bo", "cy")


def test_an_adapter_graph_of_another_export_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    export(tmp_path / "a" / "student.onnx", seed=0, avatars=["ada", "bo"])
    export(tmp_path / "b" / "student.onnx", seed=1, avatars=["ada", "bo"])
    (tmp_path / "a" / "student.arkit.onnx").write_bytes((tmp_path / "b" / "student.arkit.onnx").read_bytes())
    with pytest.raises(ModelError, match=r"student\.arkit\.onnx does not match its sidecar student\.json"):
        load_model_card(tmp_path / "a" / "student.onnx")


def test_a_failed_export_keeps_the_previous_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    model = tmp_path / "student.onnx"
    export(model, seed=0, avatars=["ada", "bo"])
    before = contents(tmp_path)
    with pytest.raises(RuntimeError, match="failed to trace"):
        export(model, seed=1, avatars=["ada", "bo", "cy"], adapter=Broken())  # fails after the main graph is written
    assert contents(tmp_path) == before
    assert load_model_card(model).avatar_names == ("ada", "bo")
