"""Few-shot talking heads end to end at the tiny preset: episodes, `megalive-train fewshot-meta` (checkpoint, resume,
samples, refusals), fine-tuning (lowers its loss; 0 steps is the feed-forward model), `megalive-train
fewshot-finetune` on a real photograph (a landmark-driven model and its card; bad input refused in one line with
nothing written), the ARKit graph's retargeting, and the benchmark's few-shot rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from contract.arkit import CURVE_INDEX
from contract.landmark_image import draw_landmark_image, retarget_landmarks
from contract.landmarks import canonical_ibug68
from contract.model_card import read_model_card
from models.checkpoints import FEWSHOT_KIND, load_checkpoint, load_fewshot
from models.cli import main
from models.data.fewshot_episodes import SyntheticEpisodes, SyntheticEpisodesConfig
from models.data.heads import SyntheticHeads, sample_clip, sample_identities
from models.fewshot.personal import PuppetLandmarks
from models.training.fewshot_settings import FewShotFinetuneConfig, FewShotLossWeights
from models.training.finetune_fewshot import finetune_person
from models.training.objective_weights import ObjectiveWeights
from models.training.student_objective import LossNetworks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NO_NETS = ["--perceptual-weight", "0", "--face-weight", "0"]  # the loss networks are tested elsewhere; these tests stay fast
META = ["--preset", "tiny", "--identities", "6", "--frames-per-video", "5", "--shots", "2", "--batch", "2", *NO_NETS]


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("fewshot") / "run"
    assert main(["fewshot-meta", "--run", str(run), *META, "--steps", "4", "--checkpoint-every", "2"]) == 0
    return run


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(pytest.importorskip("skimage.data").astronaut()).save(path)
    return path


def test_an_episode_embeds_k_frames_of_one_video_and_draws_the_targets_landmarks() -> None:
    episodes = SyntheticEpisodes(config=SyntheticEpisodesConfig(resolution=64, shots=3, identities=4, frames_per_video=5, seed=1))
    sample = episodes[7]
    assert sample.frames.shape == (3, 3, 64, 64) and sample.frame_landmark_images.shape == (3, 3, 64, 64)
    assert sample.target.shape == (3, 64, 64) and sample.target_alpha.shape == (1, 64, 64) and 0 <= int(sample.video) < 4
    drawn = torch.from_numpy(draw_landmark_image(sample.target_landmarks.numpy(), size=64)).permute(2, 0, 1)
    assert torch.equal(drawn, sample.target_landmark_image)
    again = SyntheticEpisodes(config=episodes.config)[7]
    assert torch.equal(again.target, sample.target) and int(again.video) == int(sample.video)  # a pure function of (seed, index)
    with pytest.raises(ValueError, match="must exceed shots"):
        SyntheticEpisodesConfig(resolution=64, shots=5, frames_per_video=5)


def test_meta_training_writes_a_resumable_checkpoint(meta_run: Path) -> None:
    checkpoint = load_checkpoint(meta_run / "checkpoint.pt")
    assert checkpoint["kind"] == FEWSHOT_KIND and checkpoint["step"] == 4 and checkpoint["model_config"]["num_videos"] == 6
    assert (meta_run / "samples.png").is_file() and json.loads((meta_run / "config.json").read_text())["data"]["videos"] == 6
    assert main(["fewshot-meta", "--run", str(meta_run), *META, "--steps", "6"]) == 0  # resumes at 4
    steps = [json.loads(line)["step"] for line in (meta_run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6 and load_checkpoint(meta_run / "checkpoint.pt")["step"] == 6


def test_meta_training_runs_under_torchrun_with_two_processes(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "models.cli", "fewshot-meta"]
    result = subprocess.run(
        [*command, "--run-dir", str(run), *META, "--steps", "2", "--checkpoint-every", "2"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("meta-trained to step 2") == 1  # rank 0 reports
    assert json.loads((run / "config.json").read_text())["world_size"] == 2 and load_checkpoint(run / "checkpoint.pt")["step"] == 2


def test_meta_training_reads_a_prepared_real_video_folder(prepared_videos: tuple[Path, int, str], tmp_path: Path) -> None:
    prepared, code, _ = prepared_videos
    assert code == 0
    run = tmp_path / "real"
    assert main(["fewshot-meta", "--run", str(run), "--data", str(prepared), *META, "--steps", "1", "--checkpoint-every", "1"]) == 0
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["source"] == "video" and load_checkpoint(run / "checkpoint.pt")["model_config"]["num_videos"] == data["videos"] == 2


def test_meta_training_refuses_bad_settings_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fewshot-meta", "--run", str(tmp_path / "r"), *META, "--steps", "2", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["preset"] == "tiny"
    assert main(["fewshot-meta", "--run", str(tmp_path / "r"), "--preset", "huge"]) == 2
    assert main(["fewshot-meta", "--run", str(tmp_path / "r"), "--preset", "tiny", "--shots", "8", "--frames-per-video", "8"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "unknown few-shot preset" in errors[0] and "must exceed --shots" in errors[1]
    assert not (tmp_path / "r").exists()


def synthetic_person(count: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    render = SyntheticHeads(resolution=size).render(sample_identities(1, generator=generator), sample_clip(count, generator=generator))
    return render.rgb, render.landmarks, render.alpha


def test_fine_tuning_lowers_the_loss_and_zero_steps_is_the_feed_forward_model(meta_run: Path) -> None:
    networks = load_fewshot(meta_run / "checkpoint.pt")
    frames, landmarks, alphas = synthetic_person(4)
    content = ObjectiveWeights(perceptual=0.0, face=0.0, adversarial=0.0, feature_matching=0.0)
    config = FewShotFinetuneConfig(
        checkpoint="", frames="", out="", steps=25, batch=4, learning_rate=1e-3, content=content,
        losses=FewShotLossWeights(adversarial=0.0, feature_matching=0.0),
    )  # fmt: skip
    nothing = LossNetworks(perceptual=None, face=None, status={})
    tuned = finetune_person(networks, frames=frames, landmarks=landmarks, alphas=alphas, config=config, loss_networks=nothing)
    assert tuned.last_loss < 0.8 * tuned.first_loss
    before = {name: value.clone() for name, value in networks.generator.state_dict().items()}
    feed_forward = FewShotFinetuneConfig(checkpoint="", frames="", out="", steps=0)
    fed = finetune_person(networks, frames=frames, landmarks=landmarks, config=feed_forward, loss_networks=nothing)
    assert torch.allclose(fed.adain, networks.generator.adain_parameters(fed.embedding[None])[0])  # ψ = P·ê
    assert all(torch.equal(value, before[name]) for name, value in networks.generator.state_dict().items())  # meta weights untouched


def test_the_arkit_graph_retargets_the_puppet_onto_the_persons_neutral_face() -> None:
    neutral = torch.from_numpy(canonical_ibug68().copy()).float()[None] * torch.tensor([1.1, 0.95])  # a wider, shorter face
    puppet = PuppetLandmarks(neutral_landmarks=neutral, resolution=64)
    rest = puppet(torch.zeros(1, 61), torch.zeros(1, dtype=torch.long))
    assert torch.allclose(rest, neutral, atol=1e-5)  # no expression, no pose: exactly the person's neutral landmarks
    curves = torch.zeros(1, 61)
    curves[0, CURVE_INDEX["jawOpen"]] = 1.0
    opened = puppet(curves, torch.zeros(1, dtype=torch.long))
    assert (opened[0, 57, 1] - rest[0, 57, 1]) > 0.01  # the lower lip drops
    driver_neutral = canonical_ibug68() * 2.0  # a face twice the size: its displacement is halved on the target
    displacement = np.random.default_rng(0).normal(scale=0.01, size=(68, 2))
    moved = retarget_landmarks(driver_neutral + displacement, driver_neutral, neutral[0].numpy().astype(np.float64))
    assert np.allclose(moved, neutral[0].numpy() + displacement * 0.5 * 1.1, atol=0.002)  # scaled by the eyes' distance


def test_fewshot_finetune_writes_a_landmark_driven_model_from_one_photograph(meta_run: Path, astronaut: Path, tmp_path: Path) -> None:
    out = tmp_path / "astronaut.onnx"
    args = ["fewshot-finetune", "--checkpoint", str(meta_run / "checkpoint.pt"), "--frames", str(astronaut), "--k", "1"]
    assert main([*args, "--steps", "2", "--out", str(out), *NO_NETS]) == 0
    card = read_model_card(out)
    assert card.landmark_input is not None and set(card.drivers) == {"image", "landmarks", "arkit"} and card.avatar_names == ("astronaut",)
    assert card.adapter("arkit") is not None and card.adapter("arkit").outputs == ("landmarks",)
    neutral = np.array(card.landmark_input.neutral_landmarks[0])  # the photo's landmarks over its crop
    image = draw_landmark_image(neutral * 64, size=64).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rgb, alpha = session.run(["rgb", "alpha"], {"driver": image, "avatar": np.zeros(1, np.int64)})
    assert rgb.shape == (1, 3, 64, 64) and alpha.shape == (1, 1, 64, 64)
    sheet = tmp_path / "preview.png"  # the exported model driven by held-out synthetic performers, landmarks and ARKit
    assert main(["fewshot-preview", "--model", str(out), "--out", str(sheet), "--clips", "1", "--frames", "2"]) == 0
    with Image.open(sheet) as picture:
        assert picture.width > 4 * 64 and picture.height > 2 * 64  # four columns, two rows
    graph = bytearray(out.read_bytes())
    graph[-1] ^= 0xFF  # a model whose card no longer matches it: refused in one line, nothing written
    out.write_bytes(bytes(graph))
    assert main(["fewshot-preview", "--model", str(out), "--out", str(tmp_path / "again.png")]) == 2
    assert not (tmp_path / "again.png").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: Image.new("RGB", (64, 64), "grey").save(d / "a.png"), "no face found"),
        (lambda d: (d / "a.png").write_bytes(b"not a png"), "unreadable"),
        (lambda d: (Image.new("RGB", (64, 64)).save(d / "a.png"), Image.new("RGB", (80, 64)).save(d / "b.png")), "mixed sizes"),
    ],
)
def test_bad_frames_are_refused_in_one_line_and_nothing_is_written(
    meta_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, message: str
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    make(frames)  # type: ignore[operator]
    out = tmp_path / "person.onnx"
    assert main(["fewshot-finetune", "--checkpoint", str(meta_run / "checkpoint.pt"), "--frames", str(frames), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1 and list(tmp_path.glob("person*")) == []


def test_too_few_faces_and_another_presets_checkpoint_are_refused(meta_run: Path, astronaut: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "person.onnx"
    base = ["fewshot-finetune", "--checkpoint", str(meta_run / "checkpoint.pt"), "--frames", str(astronaut), "--out", str(out)]
    assert main([*base, "--k", "8"]) == 2
    assert main([*base, "--k", "1", "--preset", "cpu128"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert "fewer than K = 8" in errors[0] and "not 'cpu128'" in errors[1] and not out.exists()


def test_the_benchmark_scores_feed_forward_and_fine_tuned_few_shot_avatars(meta_run: Path, tmp_path: Path, capsys) -> None:
    common = ["eval", "--model", str(meta_run / "checkpoint.pt"), "--clips", "2", "--frames", "2", "--sources", "2", "--out", str(tmp_path)]
    assert main([*common, "--driver", "landmarks", "--enroll-shots", "2", "--retarget"]) == 0
    report = json.loads((tmp_path / "eval-clips-landmarks-enrolled-k2-retargeted.json").read_text())
    assert report["model_kind"] == "fewshot" and report["pairs"] == 4 and report["enrollment_seconds"]["median"] > 0
    assert main([*common, "--driver", "image", "--enroll-shots", "2"]) == 2  # driven by landmarks, not pictures
    assert main([*common, "--driver", "landmarks"]) == 2  # avatars come from frames: --enroll-shots
    assert "few-shot avatars are made from frames" in capsys.readouterr().err
