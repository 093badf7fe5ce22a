"""bench/models_side_by_side.py as a user runs it (a subprocess; tests never import bench/): every model gets rounds,
the first is the reference of the ratios, bad input gets one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "models_side_by_side.py"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False
    )


def test_two_models_are_timed_in_turn(contract_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = run(contract_model_path, contract_model_path, "--seconds", "0.3", "--turn", "0.05", "--json", out)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["rounds"] >= 1 and [entry["model"] for entry in figures["models"]] == [str(contract_model_path)] * 2
    assert figures["models"][0]["versus_first"] == 1.0
    assert all(entry["frames_per_second"] > 0 and entry["precision"] == "fp32" for entry in figures["models"])
    assert "interleaved" in result.stdout


def test_bad_input_gets_one_line(contract_model_path: Path, tmp_path: Path) -> None:
    for args in ((contract_model_path,), (contract_model_path, tmp_path / "none.onnx")):
        result = run(*args, "--seconds", "0.1")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
