"""bench/teacher_jaw_response.py run as a user runs it (a subprocess; tests never import bench/): its figures are the
ones its JSON says they are, the truth it measures against does open the mouth, and bad input gets one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from models.checkpoints import BASE_KIND, load_checkpoint, save_checkpoint
from models.data.heads import SyntheticHeads, neutral_motion
from models.data.synthetic_pairs import identity_pool

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


def test_trained_identities_are_the_runs_own_pool_and_a_run_on_video_is_refused(teacher: Path, tmp_path: Path) -> None:
    done = _run("--model", str(teacher), "--out", str(tmp_path / "trained"), "--pairs", "2", "--trained-identities")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "trained" / "jaw-response.json").read_text())["identities"] == "the run's training pool"
    # The sheet's first source is the first identity of the pool the teacher trained on (conftest: 8 identities, seed 0).
    pool = identity_pool(8, seed=0)
    expected = (SyntheticHeads(resolution=64).render(pool[[0]], neutral_motion(1)).rgb[0].permute(1, 2, 0).numpy() * 255).round()
    sheet = np.asarray(Image.open(tmp_path / "trained" / "jaw-response.png"), dtype=np.float64)
    assert np.abs(sheet[2:66, 2:66] - expected).max() <= 1
    # A teacher trained on prepared video has no SyntheticHeads pool to draw from.
    on_video = load_checkpoint(teacher)
    on_video["train_config"] = {**on_video["train_config"], "data": "runs/prepared"}
    payload = {key: value for key, value in on_video.items() if key not in ("kind", "format_version", "digest")}
    save_checkpoint(payload, tmp_path / "video.pt", kind=BASE_KIND)
    refused = _run("--model", str(tmp_path / "video.pt"), "--out", str(tmp_path / "out"), "--trained-identities")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "not on SyntheticHeads identities" in refused.stderr
    assert not (tmp_path / "out").exists()


def test_bad_input_gets_one_line_and_exit_code_2(tmp_path: Path) -> None:
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    for argv in (("--model", str(not_a_checkpoint)), ("--model", str(tmp_path / "none.pt")), ("--model", "x", "--pairs", "0")):
        done = _run(*argv, "--out", str(tmp_path / "out"))
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert not (tmp_path / "out").exists()
