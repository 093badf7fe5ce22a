"""`megalive-train base`: driver augmentation, synthetic training pairs, single-process and torchrun
(DDP, gloo) training on the tiny preset, exact resume, and refusals of bad input with one line."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contract.arkit import ARKIT_INDEX
from models.checkpoints import load_base, load_base_weights, load_checkpoint, state_digest
from models.cli import main
from models.data.heads import HeadMotion
from models.data.synthetic_pairs import CLOSED_JAW, OPEN_JAW, SyntheticPairs, SyntheticPairsConfig
from models.face_regions import region_masks
from models.megaportraits.base import BaseModel
from models.training.augment import DriverAugmentation, colour_jitter, thin_plate_spline_grids
from models.training.train_base import BaseTrainConfig, region_l1, train_base

REPO_ROOT = Path(__file__).resolve().parents[2]
# Without the pretrained loss networks (they cost most of a tiny step); tiny_runs turns them and the pose network on.
TINY = dict(
    preset="tiny", steps=2, batch_size=1, identities=8, workers=0, log_every=1, checkpoint_every=2, perceptual_weight=0.0, face_weight=0.0
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _step_losses(run: Path, step: int) -> dict[str, float]:
    (line,) = [entry for entry in _log(run) if entry.get("step") == step and "event" not in entry]
    return {key: value for key, value in line.items() if key != "samples_per_second"}


def _checkpoint_digest(path: Path) -> str:
    checkpoint = load_checkpoint(path)
    return state_digest(checkpoint["generator"], checkpoint["discriminator"])


# -- augmentation and data --------------------------------------------------------------------------


def test_driver_augmentation_is_seeded_and_vanishes_at_zero_strength() -> None:
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    augment = DriverAugmentation(colour=0.8, warp=0.1)
    first = augment(images, generator=torch.Generator().manual_seed(1))
    again = augment(images, generator=torch.Generator().manual_seed(1))
    other = augment(images, generator=torch.Generator().manual_seed(2))
    assert first.shape == images.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Zero displacement: the spline reproduces the identity sampling grid; zero jitter leaves colours alone.
    grids = thin_plate_spline_grids(2, height=8, width=12, strength=0.0, points_per_side=3, generator=torch.Generator())
    identity = F.affine_grid(torch.eye(2, 3).expand(2, 2, 3), [2, 3, 8, 12], align_corners=False)
    assert torch.allclose(grids, identity, atol=1e-5)
    assert torch.equal(colour_jitter(images, strength=0.0, generator=torch.Generator()), images)
    with pytest.raises(ValueError, match="warp strength"):
        DriverAugmentation(warp=0.5)


def test_synthetic_pairs_are_a_function_of_seed_and_index() -> None:
    config = SyntheticPairsConfig(resolution=32, identities=5, clips_per_identity=2, frames_per_clip=8, length=10, seed=3)
    dataset, again = SyntheticPairs(config=config), SyntheticPairs(config=config)
    sample = dataset[4]
    assert all(torch.equal(a, b) for a, b in zip(sample, again[4], strict=True))
    assert not torch.equal(sample.source, dataset[5].source)
    assert sample.source.shape == (3, 32, 32) and sample.driver_alpha.shape == (1, 32, 32)
    identity, clip, source_frame, driver_frame, other, other_clip, cross_frame = dataset.draw(4)
    assert other != identity and source_frame != driver_frame
    # The cross target is the source's identity performing the cross driver's motion.
    motion = dataset.clip(other, other_clip)[cross_frame]
    expected = dataset.heads.render(dataset.identities[[identity]], motion)
    assert torch.allclose(sample.cross_target, expected.rgb[0], atol=1e-5)
    driver = dataset.heads.render(dataset.identities[[other]], motion)
    assert torch.allclose(sample.cross_driver, driver.rgb[0], atol=1e-5)
    assert isinstance(motion, HeadMotion) and len(dataset) == 10


def test_open_mouth_sampling_drives_closed_mouths_open_in_its_share_and_leaves_other_runs_alone() -> None:
    def closed_to_open(dataset: SyntheticPairs, index: int) -> tuple[bool, bool, bool]:
        """(the self pair is a closed source with an open driver, the cross driver is open, the clips allow both)"""
        identity, clip, source_frame, driver_frame, other, other_clip, cross_frame = dataset.draw(index)
        jaw, cross_jaw = dataset.clip_jaw(identity, clip), dataset.clip_jaw(other, other_clip)
        possible = bool((jaw < CLOSED_JAW).any() and (jaw >= OPEN_JAW).any() and (cross_jaw >= OPEN_JAW).any())
        return bool(jaw[source_frame] < CLOSED_JAW and jaw[driver_frame] >= OPEN_JAW), bool(cross_jaw[cross_frame] >= OPEN_JAW), possible

    base = SyntheticPairsConfig(resolution=32, identities=50, seed=3)
    plain, always, half = (SyntheticPairs(config=dataclasses.replace(base, open_mouth_share=share)) for share in (0.0, 1.0, 0.5))
    indices = range(120)
    always_draws = [closed_to_open(always, i) for i in indices]
    # Every sample whose clips have closed and open frames is drawn as a closed source with open drivers (most can)...
    assert all(pair and cross for pair, cross, possible in always_draws if possible)
    possible = [i for i, (_, _, can) in zip(indices, always_draws, strict=True) if can]
    assert len(possible) >= len(indices) // 3
    # ...about half of them at 0.5, and few by chance without it.
    assert 0.25 * len(possible) <= sum(closed_to_open(half, i)[0] for i in possible) <= 0.75 * len(possible)
    assert sum(pair for pair, _, _ in (closed_to_open(plain, i) for i in indices)) <= 0.15 * len(indices)
    # Identities and clips are drawn as before; a share of 0 draws exactly what a run before the option drew (these
    # draws were made by the code before it).
    assert all(always.draw(i)[:2] == plain.draw(i)[:2] and always.draw(i)[4:6] == plain.draw(i)[4:6] for i in indices)
    assert [plain.draw(i) for i in range(3)] == [(11, 3, 35, 27, 13, 1, 38), (16, 1, 0, 46, 14, 2, 7), (22, 3, 0, 44, 46, 1, 5)]
    assert torch.equal(plain.clip_jaw(11, 3), plain.clip(11, 3).expression[:, ARKIT_INDEX["jawOpen"]])
    assert "open_mouth_share" in always.describe()
    with pytest.raises(ValueError, match="open_mouth_share"):
        SyntheticPairsConfig(resolution=32, open_mouth_share=1.5)


# -- one process ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory, head_pose_network: Path) -> tuple[Path, Path]:
    """The same 2-step tiny run twice (the frozen head-pose network and every loss term on): straight through,
    and stopped after step 1 then resumed."""
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    settings = {**TINY, "perceptual_weight": 20.0, "face_weight": 4.0, "pose_network": str(head_pose_network)}
    train_base(BaseTrainConfig(run_dir=str(straight), **settings), progress=False)
    stopped = train_base(BaseTrainConfig(run_dir=str(resumed), **settings), progress=False, stop_at=1)
    assert stopped.steps == 1 and load_checkpoint(resumed / "checkpoint.pt")["step"] == 1
    train_base(BaseTrainConfig(run_dir=str(resumed), **settings), progress=False)
    return straight, resumed


def test_a_run_writes_its_resolved_config_checkpoint_log_samples_and_tensorboard(tiny_runs: tuple[Path, Path]) -> None:
    run, _ = tiny_runs
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["preset"] == "tiny" and config["model"]["resolution"] == 64
    losses = config["losses"]
    assert losses["feature_matching"] == 40 and losses["cycle"]["weight"] == 2 and losses["gaze"].startswith("absent")
    assert losses["networks"] == {"perceptual (EfficientNet-Lite0)": "active", "face (dlib ResNet)": "active"}
    assert config["model"]["pose_source"] == "pretrained" and config["model"]["head_pose_preset"] == "tiny"
    assert config["processes"] == {"world_size": 1, "device": "cpu", "backend": "none", "samples_per_step": 1, "amp": "off"}
    assert config["data"]["source"] == "synthetic"
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert checkpoint["kind"] == "megaportraits-base" and checkpoint["step"] == 2
    assert json.loads(json.dumps(checkpoint["resolved_config"])) == config
    assert set(checkpoint) >= {
        "generator",
        "discriminator",
        "optimiser_generator",
        "optimiser_discriminator",
        "scheduler_generator",
        "scheduler_discriminator",
        "model_config",
        "train_config",
    }
    assert not any(key.startswith("module.") for key in checkpoint["generator"])  # saved unwrapped
    # The frozen pose network is saved inside the teacher, unchanged by training.
    pose = load_checkpoint(Path(config["train"]["pose_network"]))["model"]
    for name, weights in pose.items():
        assert torch.equal(checkpoint["generator"][f"motion_encoder.head_pose.{name}"], weights), name
    log = _log(run)
    assert [entry["step"] for entry in log if "event" not in entry] == [1, 2]
    assert all(entry["generator"] == entry["generator"] for entry in log if "event" not in entry)  # finite, not NaN
    assert all(entry["perceptual"] > 0 and entry["face"] > 0 for entry in log if "event" not in entry)
    assert log[-1]["event"] == "end" and log[-1]["replicas_agree"]
    assert (run / "samples.png").stat().st_size > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_continues_exactly_as_the_uninterrupted_run(tiny_runs: tuple[Path, Path]) -> None:
    straight, resumed = tiny_runs
    assert _step_losses(resumed, 2) == _step_losses(straight, 2)
    assert _checkpoint_digest(resumed / "checkpoint.pt") == _checkpoint_digest(straight / "checkpoint.pt")
    starts = [entry for entry in _log(resumed) if entry.get("event") == "start"]
    assert [(entry["step"], entry["resumed"]) for entry in starts] == [(0, False), (1, True)]


def test_a_prepared_video_folder_trains_with_its_cross_targets_weighted_out(prepared_videos: tuple[Path, int, str], tmp_path: Path) -> None:
    folder, code, _ = prepared_videos
    assert code == 0
    run = tmp_path / "video"
    summary = train_base(BaseTrainConfig(run_dir=str(run), data=str(folder), **TINY), progress=False)
    assert summary.steps == 2 and load_checkpoint(run / "checkpoint.pt")["step"] == 2
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["data"] == str(folder)
    assert config["data"]["source"] == "video" and config["data"]["root"] == str(folder) and config["data"]["resolution"] == 64
    steps = [entry for entry in _log(run) if "event" not in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    assert all(math.isfinite(value) for entry in steps for value in entry.values())
    assert (run / "samples.png").stat().st_size > 0


# -- torchrun ---------------------------------------------------------------------------------------


def _torchrun(run: Path, *options: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "models.cli",
        "base",
        "--run-dir",
        str(run),
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch",
        "1",
        "--identities",
        "8",
        "--workers",
        "0",
        "--log-every",
        "1",
        "--perceptual-weight",
        "0",
        "--face-weight",
        "0",
        *options,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torchrun_two_processes_end_with_equal_weights_and_resume_exactly(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = _torchrun(straight)
    assert result.stdout.count("trained the base model") == 1  # rank 0 reports
    end = _log(straight)[-1]
    assert end["event"] == "end" and len(end["process_digests"]) == 2
    assert end["process_digests"][0] == end["process_digests"][1] == _checkpoint_digest(straight / "checkpoint.pt")
    assert json.loads((straight / "config.json").read_text())["processes"]["backend"] == "gloo"

    _torchrun(resumed, "--stop-at", "1")
    _torchrun(resumed)
    assert _step_losses(resumed, 2) == _step_losses(straight, 2)
    assert _log(resumed)[-1]["process_digests"] == end["process_digests"]


def test_a_torchrun_worker_ends_without_finalisation_and_keeps_its_status_and_output() -> None:
    # The exit path that keeps gloo's surviving worker threads from aborting a finished run (see models.training.distributed).
    script = (
        "import sys\nfrom models.training.distributed import end_process\nassert end_process(3, distributed=False) == 3\n"
        "import atexit\natexit.register(print, 'finalised')\n"
        "print('last words', end='')\nprint('on stderr', end='', file=sys.stderr)\nend_process(4, distributed=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (4, "last words", "on stderr")


# -- bad input --------------------------------------------------------------------------------------


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["base", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("megalive-train base: ") and error.count("\n") == 1, error
    return error


def test_a_checkpoint_of_another_preset_is_refused_and_nothing_is_overwritten(
    tiny_runs: tuple[Path, Path], head_pose_network: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight, _ = tiny_runs
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(straight / "checkpoint.pt", run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    error = _refused(capsys, "--run", str(run), "--preset", "cpu128", "--steps", "2")
    assert "'tiny'" in error and "'cpu128'" in error
    assert (run / "checkpoint.pt").read_bytes() == before and sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]

    error = _refused(capsys, "--run", str(tmp_path / "fresh"), "--preset", "cpu128", "--init", str(straight / "checkpoint.pt"))
    assert "--init" in error and "'tiny'" in error and not (tmp_path / "fresh").exists()
    # The same preset starts from the checkpoint's weights (here: stops before the first step).
    start = train_base(
        BaseTrainConfig(run_dir=str(tmp_path / "init"), init=str(straight / "checkpoint.pt"), pose_network=str(head_pose_network), **TINY),
        progress=False,
        stop_at=0,
    )
    assert start.steps == 0 and start.weights_digest == _checkpoint_digest(straight / "checkpoint.pt")


def test_a_pose_network_of_the_wrong_kind_or_resolution_is_refused_before_anything_is_written(
    tiny_runs: tuple[Path, Path], head_pose_network: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight, _ = tiny_runs
    run = tmp_path / "run"
    error = _refused(capsys, "--run", str(run), "--preset", "tiny", "--pose-network", str(straight / "checkpoint.pt"))
    assert "is not a head-pose network checkpoint" in error and "megaportraits-base" in error
    # Trained on 64 px renders: refused for a 128 px teacher.
    error = _refused(capsys, "--run", str(run), "--preset", "cpu128", "--pose-network", str(head_pose_network))
    assert "64 px renders" in error and "128 px" in error
    assert "no such file" in _refused(capsys, "--run", str(run), "--pose-network", str(tmp_path / "none.pt"))
    assert not run.exists()


def test_feature_crops_train_with_a_pose_network_and_are_refused_without_one(
    head_pose_network: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "--pose-network" in _refused(capsys, "--run", str(tmp_path / "bare"), "--preset", "tiny", "--feature-crops")
    assert not (tmp_path / "bare").exists()
    run = tmp_path / "crops"
    argv = ["base", "--run", str(run), "--preset", "tiny", "--steps", "1", "--batch", "1", "--pose-network", str(head_pose_network)]
    argv += ["--feature-crops", "--perceptual-weight", "0", "--face-weight", "0", "--log-every", "1"]
    assert main(argv) == 0
    model = load_base(run / "checkpoint.pt")
    assert model.config.feature_crops and model.motion_encoder.crops is not None
    # Resuming it without the crops is another run: refused, not silently rebuilt.
    capsys.readouterr()
    assert main([value for value in argv if value != "--feature-crops"]) == 2
    assert "another feature_crops" in capsys.readouterr().err


# Options a trained teacher can be extended with, and where each one's new weights live (zero when it starts).
ADDED_WEIGHTS = {
    "feature_crops": lambda model: model.motion_encoder.expression.weight[:, -model.motion_encoder.crops.features :],  # z's crop columns
    "decoder_expression": lambda model: model.decoder.up[0].norm_first.scale.weight,  # a G2D norm's weights on z
}


@pytest.mark.parametrize("option", ADDED_WEIGHTS)
def test_a_teacher_without_an_option_starts_one_with_it_exactly_where_it_was(
    option: str, tiny_runs: tuple[Path, Path], head_pose_network: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight, _ = tiny_runs
    plain = load_base(straight / "checkpoint.pt").eval()
    extended = BaseModel(config=dataclasses.replace(plain.config, **{option: True})).eval()
    load_base_weights(extended, load_checkpoint(straight / "checkpoint.pt"), path=straight / "checkpoint.pt")
    assert ADDED_WEIGHTS[option](extended).abs().sum() == 0
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before, after = plain(images, images.flip(0)), extended(images, images.flip(0))
    torch.testing.assert_close(after.rgb, before.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(after.alpha, before.alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(after.driver_motion.expression, before.driver_motion.expression, atol=1e-5, rtol=0)
    # `--init` does the same in a run, which then trains the new weights.
    settings = {**TINY, "pose_network": str(head_pose_network), "init": str(straight / "checkpoint.pt")}
    train_base(BaseTrainConfig(run_dir=str(tmp_path / "extended"), **{option: True}, **settings), progress=False, stop_at=1)
    trained = load_base(tmp_path / "extended" / "checkpoint.pt")
    assert getattr(trained.config, option) and ADDED_WEIGHTS[option](trained).abs().sum() > 0
    # The other way round would drop what the new weights learned: refused in one line, nothing written.
    init = str(tmp_path / "extended" / "checkpoint.pt")
    argv = ("--run", str(tmp_path / "back"), "--preset", "tiny", "--pose-network", str(head_pose_network), "--init", init)
    assert f"add --{option.replace('_', '-')}" in _refused(capsys, *argv)
    assert not (tmp_path / "back").exists()


def test_a_checkpoint_saved_before_an_option_existed_loads_with_the_option_off(tiny_runs: tuple[Path, Path], tmp_path: Path) -> None:
    straight, _ = tiny_runs
    checkpoint = load_checkpoint(straight / "checkpoint.pt")
    for option in ("feature_crops", "decoder_expression"):  # fields BaseConfig gained after teachers had been trained
        del checkpoint["model_config"][option]
    torch.save(checkpoint, tmp_path / "older.pt")
    older = load_base(tmp_path / "older.pt")
    assert not older.config.feature_crops and not older.config.decoder_expression
    assert state_digest(older.state_dict()) == state_digest(load_base(straight / "checkpoint.pt").state_dict())


def test_the_adversarial_matching_and_cycle_weights_are_recorded_and_zero_leaves_their_terms_out(tmp_path: Path) -> None:
    """--adversarial-weight, --feature-matching-weight, --cycle-weight (for ablations): the run records them, and at 0
    the generator's loss is the L1 and mask terms alone although the three are still measured and logged."""
    settings = {**TINY, "steps": 1, "checkpoint_every": 1}
    run = tmp_path / "run"
    train_base(
        BaseTrainConfig(run_dir=str(run), **settings, adversarial_weight=0.0, feature_matching_weight=0.0, cycle_weight=0.0),
        progress=False,
    )
    losses = json.loads((run / "config.json").read_text())["losses"]
    assert (losses["adversarial"], losses["feature_matching"], losses["cycle"]["weight"]) == (0.0, 0.0, 0.0)
    logged = _step_losses(run, 1)
    assert logged["feature_matching"] > 0 and logged["cycle"] != 0  # measured, weighted out
    assert logged["generator"] == pytest.approx(10 * logged["l1"] + 10 * logged["mask"], rel=1e-5)
    with_them = tmp_path / "with"
    train_base(BaseTrainConfig(run_dir=str(with_them), **settings), progress=False)
    assert _step_losses(with_them, 1)["generator"] != pytest.approx(10 * logged["l1"] + 10 * logged["mask"], rel=1e-3)


def test_other_bad_input_gets_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "prepared video folder not found" in _refused(capsys, "--run", str(tmp_path / "run"), "--data", str(tmp_path / "nowhere"))
    assert "no meta.json" in _refused(capsys, "--run", str(tmp_path / "run"), "--data", str(tmp_path))
    assert "--amp" in _refused(capsys, "--run", str(tmp_path / "run"), "--amp", "--device", "cpu")
    assert "unknown preset" in _refused(capsys, "--run", str(tmp_path / "run"), "--preset", "huge")
    assert "--open-mouth-share must be" in _refused(capsys, "--run", str(tmp_path / "run"), "--open-mouth-share", "2")
    assert "use --data synthetic" in _refused(capsys, "--run", str(tmp_path / "run"), "--open-mouth-share", "0.5", "--data", str(tmp_path))
    assert "--cycle-weight must be in [0, 1000]" in _refused(capsys, "--run", str(tmp_path / "run"), "--cycle-weight", "-1")
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_the_resolved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["base", "--run", str(tmp_path / "run"), "--preset", "tiny", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["resolution"] == 64 and resolved["train"]["batch_size"] == 2
    assert resolved["losses"]["perceptual (EfficientNet-Lite0, in place of VGG19)"] == 20
    assert resolved["losses"]["face (dlib ResNet, in place of the paper's face network)"] == 4
    assert resolved["pose"] == "learned by E_mtn"
    assert not (tmp_path / "run").exists()


def test_the_region_term_sees_only_the_eye_and_mouth_boxes_of_elements_with_a_target() -> None:
    """--region-weight's L1: zero for a difference outside the targets' eye and mouth boxes, the mean difference
    inside them otherwise, and nothing from an element without a target."""
    size = 64
    pairs = SyntheticPairs(config=SyntheticPairsConfig(resolution=size, identities=4, seed=3))
    landmarks = torch.stack([pairs[0].driver_landmarks, pairs[1].driver_landmarks])  # 2×68×2
    boxes = region_masks(landmarks, size=size).amax(dim=1, keepdim=True)  # 2×1×H×W
    targets = torch.zeros(2, 3, size, size)
    outside = targets + 0.5 * (1 - boxes)
    inside = targets + 0.25 * boxes
    both, first_only = torch.ones(2), torch.tensor([1.0, 0.0])
    assert boxes.sum() > 0 and float(region_l1(outside, targets, landmarks, both)) == 0.0
    assert float(region_l1(inside, targets, landmarks, both)) == pytest.approx(0.25)
    assert float(region_l1(inside * torch.tensor([0.0, 1.0]).view(2, 1, 1, 1), targets, landmarks, first_only)) == 0.0
