"""`megalive-train eval` without the metric networks' weight files (MEGALIVE_NETS_DIR an empty folder): it still runs,
and the report says the perceptual, CSIM and FD figures are absent and why; `eval-table` prints such reports, and
reports written before these figures existed, with "—" in their cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.cli import main
from models.evaluation import TABLE_COLUMNS, side_by_side_table
from models.nets.weights import FACE_NETWORK, FILES, PERCEPTUAL_NETWORK

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NETWORK_FIGURES = ("perceptual_distance", "eye_perceptual", "mouth_perceptual", "csim_dlib_target", "csim_dlib_source", "fd_effnet")
NEW_FIGURES = ("eye_psnr", "mouth_psnr", *NETWORK_FIGURES)


def test_without_weight_files_the_network_figures_are_absent_and_say_why(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "no-nets"
    empty.mkdir()
    monkeypatch.setenv("MEGALIVE_NETS_DIR", str(empty))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(teacher), "--out", str(out), "--clips", "1", "--frames", "3", "--sources", "2"]) == 0
    printed = capsys.readouterr().out
    assert "perceptual distances (EfficientNet-Lite0: whole, eyes, mouth) and FD-EffNet: absent: efficientnet-lite0:" in printed
    assert "CSIM-dlib: absent: face-recognition-manifest:" in printed and "make nets" in printed
    report = json.loads((out / "eval-clips.json").read_text())
    for network, key in ((PERCEPTUAL_NETWORK, "efficientnet-lite0"), (FACE_NETWORK, "face-recognition-manifest")):
        status = report["networks"][network]
        assert status.startswith("absent: ") and f"{empty / FILES[key].relative_path} is missing" in status
    for figures in (report["cross"]["model_output"], report["cross"]["source_copy"], report["cross"]["driver_copy"]):
        assert all(figures[key] is None for key in NETWORK_FIGURES)  # absent, nothing in their place
        assert 0 < figures["eye_psnr"] < 100 and 0 < figures["mouth_psnr"] < 100  # the region figures need no network
    assert report["notes"] == []  # no FD-EffNet, no note on it

    assert main(["eval-table", str(out / "eval-clips.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    columns = [title for _, title, _ in TABLE_COLUMNS]
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")][2:]  # cross: teacher's row, after name and px
    network_titles = ("perceptual distance (EfficientNet-Lite0)", "eye perceptual (EfficientNet-Lite0)", "CSIM-dlib (target)", "FD-EffNet")
    assert [cells[columns.index(title)] for title in network_titles] == ["—"] * len(network_titles)
    assert cells[columns.index("eye PSNR")] != "—"
    assert any(line.startswith("checkpoint.pt: CSIM-dlib absent: ") for line in lines)


def test_reports_written_before_the_face_figures_still_print(tmp_path: Path) -> None:
    figures = {"foreground_psnr": 18.0, "foreground_ssim": 0.7, "psnr": None, "ssim": None}
    figures |= {"rotation_error_deg": None, "expression_error": None, "identity_error": None}
    baseline = {**figures, "psnr": 22.0, "ssim": 0.75}
    old = {  # an eval report as written before eye/mouth PSNR, the network figures, networks and notes existed
        "config": {"seed": 424242},
        "model": "runs/teacher/checkpoint.pt",
        "model_kind": "teacher",
        "motions": "clips",
        "driver": "image",
        "pairs": 200,
        "resolution": 128,
        "sources": "16 held-out identities",
        "cross": {"model_output": figures, "source_copy": baseline, "driver_copy": baseline},
        "self_reenactment": {"model_output": figures, "source_copy": baseline},
        "ground_truth": None,
        "regressor": None,
    }
    lines = side_by_side_table([old]).splitlines()
    assert len(lines) == 2 + 2 + 2  # header, cross and self, two baselines; no zero-answer row, no absent networks
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[:6] == ["cross: teacher (checkpoint.pt)", "128", "—", "—", "18.00", "0.7000"]
    assert cells[6:] == ["—"] * (len(TABLE_COLUMNS) - 4)
