"""bench/teacher_jaw_response.py run as a user runs it (a subprocess; tests never import bench/): its figures are the
ones its JSON says they are, the truth it measures against does open the mouth, and bad input gets one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "teacher_jaw_response.py"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_the_jaw_response_of_a_teacher_is_measured_against_renders_that_open_the_mouth(teacher: Path, tmp_path: Path) -> None:
    done = _run("--model", str(teacher), "--out", str(tmp_path), "--pairs", "3")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "jaw-response.json").read_text())
    assert report["pairs"] == 3 and report["jaw_open"] == 0.9
    assert report["target_mouth_change"] > 0.02  # the renderer's open mouths differ from its closed ones
    assert report["jaw_response"] == report["output_mouth_change"] / report["target_mouth_change"]
    assert f"jaw response {report['jaw_response']:.2f}" in done.stdout
    # Rows: source, driver closed, driver open, output closed, output open, target open; 3 columns of 64 px (+ padding).
    assert Image.open(tmp_path / "jaw-response.png").size == (3 * 66 + 2, 6 * 66 + 2)


def test_bad_input_gets_one_line_and_exit_code_2(tmp_path: Path) -> None:
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    for argv in (("--model", str(not_a_checkpoint)), ("--model", str(tmp_path / "none.pt")), ("--model", "x", "--pairs", "0")):
        done = _run(*argv, "--out", str(tmp_path / "out"))
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert not (tmp_path / "out").exists()
