"""The model factory end to end on tiny sizes: synth -> student -> export -> eval -> demo, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from models.data.paired import PairedHeads
from models.training.train_student import StudentTrainConfig, train_student

REPO_ROOT = Path(__file__).resolve().parents[2]


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


def test_synth_writes_frames_masks_landmarks_parameters_and_a_sheet(tiny_dataset: Path) -> None:
    names = {p.name for p in tiny_dataset.iterdir()}
    assert {
        "meta.json",
        "avatars.npz",
        "drivers.npz",
        "motions.npz",
        "pairs.npz",
        "driver_rgba.npy",
        "target_rgba.npy",
        "driver_landmarks.npy",
        "target_landmarks.npy",
        "neutral_rgba.npy",
        "contact_sheet.png",
    } <= names
    data = PairedHeads(root=tiny_dataset)
    driver, target_rgb, target_alpha, avatar, landmarks = data[5]
    assert driver.shape == (3, 64, 64) and target_rgb.shape == (3, 64, 64) and target_alpha.shape == (1, 64, 64)
    assert landmarks.shape == (68, 2) and 0 < float(landmarks.min()) and float(landmarks.max()) < 64
    assert 0 <= avatar < 3 and 0.05 < float(target_alpha.mean()) < 0.95
    assert not any(p.name.startswith(".") for p in tiny_dataset.parent.iterdir())  # no staging folder left


def test_synth_cli_refuses_bad_arguments_and_an_existing_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    for args, message in ((["--avatars", "0"], "--avatars"), (["--resolution", "8"], "--resolution")):
        result = train_cli("synth", str(tmp_path / "x"), *args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    existing = train_cli("synth", str(tiny_dataset), "--pairs", "2", "--resolution", "32")
    assert existing.returncode == 2 and "exists already" in existing.stderr
    assert not (tmp_path / "x").exists()


TINY_SYNTH = ("--resolution", "32", "--avatars", "1", "--drivers", "1", "--pairs", "2", "--batch", "2")


def test_synth_rerun_removes_the_partial_folder_a_killed_run_left(tmp_path: Path) -> None:
    stale = tmp_path / ".fresh.partial-k1lled"  # what a SIGKILLed synth of `fresh` leaves
    stale.mkdir()
    (stale / "driver_rgba.npy").write_bytes(bytes(4096))
    other = tmp_path / ".other.partial-k1lled"  # another target's: not this run's to remove
    other.mkdir()
    result = train_cli("synth", str(tmp_path / "fresh"), *TINY_SYNTH)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stdout.splitlines() if "partial folder" in line]
    assert len(said) == 1 and stale.name in said[0] and "interrupted" in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "fresh"]
    assert json.loads((tmp_path / "fresh" / "meta.json").read_text())["num_pairs"] == 2


def test_synth_leaves_the_partial_folder_of_a_running_synth_alone(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    from models.data.paired import DatasetError, SynthConfig, remove_stale_partials, write_paired_dataset

    live = tmp_path / ".busy.partial-running"
    live.mkdir()
    descriptor = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running synth holds its partial folder
        with pytest.raises(DatasetError, match="another synth is writing"):
            config = SynthConfig(resolution=32, num_avatars=1, num_driver_identities=1, num_motions=2)
            write_paired_dataset(tmp_path / "busy", config, command="test", progress=False)
        assert [p.name for p in tmp_path.iterdir()] == [live.name]
    finally:
        os.close(descriptor)
    assert remove_stale_partials(tmp_path / "busy") == (live,) and not live.exists()  # its synth gone: stale now


def test_an_interrupted_synth_removes_its_partial_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.data.paired as paired

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(paired, "write_contact_sheet", interrupt)  # late in the run: the big arrays are written
    with pytest.raises(KeyboardInterrupt):
        paired.write_paired_dataset(
            tmp_path / "out",
            paired.SynthConfig(resolution=32, num_avatars=1, num_driver_identities=1, num_motions=2),
            command="test",
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_a_terminated_synth_removes_its_partial_folder(tmp_path: Path) -> None:
    """SIGTERM (kill, a scheduler's time limit) mid-render unwinds like Ctrl-C instead of leaving the partial folder."""
    command = [
        sys.executable,
        "-m",
        "models.cli",
        "synth",
        str(tmp_path / "big"),
        "--resolution",
        "32",
        "--avatars",
        "1",
        "--drivers",
        "1",
        "--pairs",
        "50000",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        started = False  # the big arrays are open: rendering has begun
        while not started and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            started = bool(list(tmp_path.glob(".big.partial-*/driver_rgba.npy")))
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.5)  # rendering now
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert list(tmp_path.iterdir()) == []


def test_training_lowers_the_loss_and_writes_a_checkpoint(tiny_run: Path, tiny_dataset: Path) -> None:
    import torch

    from models.checkpoints import load_checkpoint, student_from_checkpoint
    from models.megaportraits.student import Student, student_config
    from models.training.student_objective import STUDENT_DISCRIMINATORS, LossNetworks, ObjectiveWeights, StudentObjective

    data = PairedHeads(root=tiny_dataset)
    items = [data[i] for i in range(len(data))]
    driver, target_rgb, target_alpha = (torch.stack([item[k] for item in items]) for k in range(3))
    avatar, landmarks = torch.tensor([item[3] for item in items]), torch.stack([item[4] for item in items])
    # L1, SSIM and mask at weight 1, no networks: the fixture's reconstruction-only objective
    weights = ObjectiveWeights(region=0.0, perceptual=0.0, face=0.0, adversarial=0.0, feature_matching=0.0)
    networks = LossNetworks(perceptual=None, face=None, status={})
    objective = StudentObjective(weights=weights, networks=networks, discriminator=STUDENT_DISCRIMINATORS["small"])
    torch.manual_seed(0)  # the trainer's seed: the same initial weights
    before = Student(config=student_config("tiny", num_avatars=3))
    trained = student_from_checkpoint(load_checkpoint(tiny_run / "checkpoint.pt"))
    with torch.no_grad():
        loss_before = float(objective.generator_terms(*before(driver, avatar), target_rgb, target_alpha, landmarks).total)
        loss_after = float(objective.generator_terms(*trained(driver, avatar), target_rgb, target_alpha, landmarks).total)
    assert loss_after < 0.9 * loss_before, (loss_before, loss_after)
    assert json.loads((tiny_run / "log.jsonl").read_text().splitlines()[-1])["step"] == 100
    assert (tiny_run / "samples.png").is_file()
    networks = json.loads((tiny_run / "config.json").read_text())["objective"]["networks"]
    assert set(networks.values()) == {"off (weight 0)"}  # the fixture's objective: reconstruction terms only


def test_training_resumes_from_its_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    config = StudentTrainConfig(
        data=str(tiny_dataset),
        run_dir=str(tmp_path / "r"),
        preset="tiny",
        steps=10,
        batch_size=4,
        log_every=5,
        checkpoint_every=10,
        workers=0,
    )
    train_student(StudentTrainConfig(**{**config.__dict__, "command": "first"}), progress=False)
    summary = train_student(StudentTrainConfig(**{**config.__dict__, "steps": 15, "command": "first"}), progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert summary.steps == 15 and steps == [5, 10, 15]
    from models.checkpoints import load_checkpoint

    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["commands"] == ["first"]  # a plain resume is not repeated
    # A second phase with other options: both commands stay in the run's provenance, in order.
    second = {**config.__dict__, "steps": 20, "checkpoint_every": 5, "command": "second phase"}
    train_student(StudentTrainConfig(**second), progress=False)
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["commands"] == ["first", "second phase"]


def test_student_cli_one_line_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    cases = [
        (["--data", str(tmp_path / "missing"), "--run", str(tmp_path / "r1")], "not found"),
        (["--data", str(tiny_dataset), "--run", str(tmp_path / "r2"), "--preset", "huge"], "unknown preset"),
        (["--data", str(tiny_dataset), "--run", str(tmp_path / "r3"), "--target", "teacher"], "needs --teacher"),
        (
            ["--data", str(tiny_dataset), "--run", str(tmp_path / "r6"), "--teacher", str(tmp_path / "t.pt")],
            "only used with --target teacher",
        ),
        (["--data", str(tiny_dataset), "--run", str(tmp_path / "r4"), "--preset", "cpu256"], "dataset is 64 px"),
    ]
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "meta.json").write_text("{broken")
    cases.append((["--data", str(corrupt), "--run", str(tmp_path / "r5")], "unreadable"))
    for args, message in cases:
        result = train_cli("student", *args, "--steps", "1", "--workers", "0")
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_export_eval_and_demo_on_the_tiny_student(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    exported = train_cli("export", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(model))
    assert exported.returncode == 0, exported.stderr
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert sidecar["parity_max_abs_error"] < 1e-4 and sidecar["avatars"] == ["Ada", "Basil", "Cleo"]
    assert "write_paired_dataset" in sidecar["command"] and "export" in sidecar["command"]
    assert np.load(model.with_name(sidecar["thumbnails"])).shape == (3, 96, 96, 3)

    mismatch = train_cli("export", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(tmp_path / "m.onnx"), "--preset", "cpu256")
    assert mismatch.returncode == 2 and "preset 'tiny'" in mismatch.stderr and not (tmp_path / "m.onnx").exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    unreadable = train_cli("export", "--checkpoint", str(garbage), "--out", str(tmp_path / "g.onnx"))
    assert unreadable.returncode == 2 and "unreadable" in unreadable.stderr

    evaluated = train_cli(
        "eval", "--model", str(model), "--data", str(tiny_dataset), "--out", str(tmp_path / "eval"), "--clips", "2", "--frames", "8"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "eval" / "eval-clips.json").read_text())
    assert report["pairs"] == 16 and report["model_kind"] == "student" and report["regressor"] is None
    for section, names in (
        ("cross", ("model_output", "source_copy", "driver_copy")),
        ("self_reenactment", ("model_output", "source_copy")),
    ):
        for name in names:
            figures = report[section][name]
            assert 0 < figures["psnr"] < 100 and -1 <= figures["ssim"] <= 1 and 0 < figures["foreground_psnr"] < 100
            assert figures["rotation_error_deg"] is None  # no regressor: absent, not made up
    assert (tmp_path / "eval" / "contact-sheet-clips.png").is_file()

    from models.data.demo_clip import render_driver_clip
    from server.demo import DemoConfig, run_demo

    clip = tmp_path / "clip.mp4"
    assert render_driver_clip(clip, resolution=64, seconds_per_identity=0.4, identities=2) == 20
    demo = run_demo(DemoConfig(model=model, clip=clip, out_dir=tmp_path / "out"), progress=False)
    assert demo.textures == 20 * 3 and demo.dropped == 0
    assert demo.video.stat().st_size > 0 and demo.still.is_file()
    from server.demo import read_clip

    frames, fps = read_clip(demo.video)
    assert len(frames) == 20 and frames[0].shape == (64, 64 * 4, 3) and fps == 25.0


def test_export_student_without_the_cli(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """models.export's student export, called as a library: provenance chain, thumbnails, the dry run's summary."""
    from models.export import THUMBNAIL_SIZE, export_student, load_student_export
    from models.training.common import TrainingError

    student = load_student_export(tiny_run / "checkpoint.pt", capture=False)
    out = tmp_path / "direct" / "student.onnx"
    assert student.describe(out) == {
        "out": str(out),
        "resolution": 64,
        "avatars": ["Ada", "Basil", "Cleo"],
        "step": 100,
        "drivers": ["image"],
        "capture": {},
        "contract": 1,  # a student without an identity embedder: the avatar index input
    }
    report = export_student(student, out, command="tests: export_student")
    assert report.model_path == out and report.max_abs_error < 1e-4
    sidecar = json.loads(out.with_suffix(".json").read_text())
    # dataset, student training, then this export: each command that made the model, in order
    assert sidecar["command"] == "tests: write_paired_dataset && tests && tests: export_student"
    assert sidecar["config"]["step"] == 100 and sidecar["config"]["train"]["data"] == str(tiny_dataset)
    assert sidecar["drivers"] == ["image"] and sidecar["adapters"] == {}
    thumbnails = np.load(out.with_name(sidecar["thumbnails"]))
    assert thumbnails.shape == (3, THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3) and thumbnails.dtype == np.uint8

    with pytest.raises(TrainingError, match="preset 'tiny'"):
        load_student_export(tiny_run / "checkpoint.pt", expect_preset="cpu256")
    with pytest.raises(TrainingError, match="checkpoint not found"):
        load_student_export(tiny_run / "checkpoint.pt", landmark_solver=tmp_path / "no-solver.pt")


def test_a_slim_checkpoint_keeps_the_student_and_drops_the_trainer_state(tiny_run: Path, tmp_path: Path) -> None:
    import torch

    from models.checkpoints import load_checkpoint, slim_checkpoint, student_from_checkpoint

    slim = slim_checkpoint(tiny_run / "checkpoint.pt", tmp_path / "slim.pt")
    full, kept = load_checkpoint(tiny_run / "checkpoint.pt"), load_checkpoint(slim)
    assert "optimiser" in full and "optimiser" not in kept and "scheduler" not in kept
    assert slim.stat().st_size < 0.5 * (tiny_run / "checkpoint.pt").stat().st_size
    assert kept["digest"] == full["digest"] and kept["step"] == full["step"]
    for name, tensor in student_from_checkpoint(kept).state_dict().items():
        assert torch.equal(tensor, student_from_checkpoint(full).state_dict()[name])
