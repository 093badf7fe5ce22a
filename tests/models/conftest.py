"""Fixtures of the model tests, made once per session: a tiny paired dataset, a tiny trained student, and a tiny
`megalive-train prepare` folder of real-photo video (skimage's astronaut moved by affine warps)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.cli import main
from models.data.paired import SynthConfig, write_paired_dataset
from models.training.objective_weights import ObjectiveWeights
from models.training.train_student import StudentTrainConfig, train_student

RESOLUTION = 64
FRAMES = 12
# (canvas width, height, scale): the MP4 as a webcam frame; the frame folder larger, with the photo scaled to match,
# so the two inputs differ in resolution. Faces stay about 100 px wide (smaller ones are missed now and then).
MP4_CANVAS = (640, 480, 1.0)
FOLDER_CANVAS = (800, 600, 1.25)
OFFSET = (96.0, 128.0)  # where the photo's corner sits in the canvas at rest, in canvas pixels at scale 1


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synth"
    write_paired_dataset(
        out,
        SynthConfig(resolution=64, num_avatars=3, num_driver_identities=6, num_motions=48, batch_size=16),
        command="tests: write_paired_dataset",
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "student"
    train_student(
        StudentTrainConfig(
            data=str(tiny_dataset),
            run_dir=str(run),
            preset="tiny",
            steps=100,
            batch_size=8,
            learning_rate=3e-3,
            log_every=10,
            checkpoint_every=50,
            workers=0,
            command="tests",
            # Reconstruction terms only: the pretrained networks and the discriminator are slow at 100 steps on
            # 2 cores; test_student_objective.py trains with every term.
            objective=ObjectiveWeights(perceptual=0.0, face=0.0, adversarial=0.0, feature_matching=0.0),
        ),
        progress=False,
    )
    return run


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks run fastest on one thread (and leave the other core alone); restored afterwards.
    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny (64 px) base-model checkpoint after 2 training steps: for plumbing, not looks."""
    import torch

    from models.training.train_base import BaseTrainConfig, train_base

    run = tmp_path_factory.mktemp("teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_base(
            BaseTrainConfig(
                run_dir=str(run),
                preset="tiny",
                steps=2,
                batch_size=1,
                identities=8,
                workers=0,
                log_every=1,
                checkpoint_every=2,
                perceptual_weight=0.0,
                face_weight=0.0,
            ),  # fmt: skip
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    return run / "checkpoint.pt"


@pytest.fixture(scope="session")
def head_pose_network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny head-pose network checkpoint (64 px renders, 3 steps): for plumbing, not accuracy."""
    import torch

    from models.training.train_head_pose import HeadPoseTrainConfig, train_head_pose

    out = tmp_path_factory.mktemp("head-pose") / "head_pose.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_head_pose(
            HeadPoseTrainConfig(out=str(out), preset="tiny", renders=32, render_resolution=64, steps=3, batch_size=8, held_out=16),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    return out


def _place(photo: np.ndarray, *, canvas: tuple[int, int, float], scale: float, shift: tuple[float, float]) -> np.ndarray:
    """The photo scaled and moved into a grey canvas: canvas = base·(scale·photo + OFFSET + shift)."""
    width, height, base = canvas
    total = base * scale
    offset_x, offset_y = base * (OFFSET[0] + shift[0]), base * (OFFSET[1] + shift[1])
    inverse = (1 / total, 0.0, -offset_x / total, 0.0, 1 / total, -offset_y / total)  # canvas -> photo
    image = Image.fromarray(photo).transform(
        (width, height), Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR, fillcolor=(120, 120, 120)
    )
    return np.asarray(image)


def poses() -> list[tuple[float, tuple[float, float]]]:
    return [(1.0 + 0.01 * k, (3.0 * k, -2.0 * k)) for k in range(FRAMES)]  # drifts right and up, zooms in slightly


def _write_mp4(path: Path, frames: list[np.ndarray], *, fps: int = 10) -> None:
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, quality=8)
    writer.send(None)  # start ffmpeg
    for frame in frames:
        writer.send(np.ascontiguousarray(frame).tobytes())
    writer.close()


@pytest.fixture(scope="session")
def prepared_videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """SRC with two good inputs (a short astronaut clip as an MP4 and as a frame folder) and bad ones, prepared once per
    session through the CLI at RESOLUTION px: (DST, exit code, stdout). Skipped without mediapipe or imageio-ffmpeg."""
    pytest.importorskip("mediapipe")
    pytest.importorskip("imageio_ffmpeg")
    photo = pytest.importorskip("skimage.data").astronaut()  # 512×512×3, one frontal face
    src = tmp_path_factory.mktemp("videos")
    _write_mp4(src / "astronaut.mp4", [_place(photo, canvas=MP4_CANVAS, scale=s, shift=d) for s, d in poses()])
    (src / "astronaut_frames").mkdir()
    for index, (scale, shift) in enumerate(poses()):
        Image.fromarray(_place(photo, canvas=FOLDER_CANVAS, scale=scale, shift=shift)).save(src / "astronaut_frames" / f"frame{index}.png")
    (src / "broken.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (src / "empty.mp4").write_bytes(b"")
    _write_mp4(src / "grey.mp4", [np.full((240, 320, 3), 128, dtype=np.uint8)] * 6)  # no face anywhere
    (src / "mixed_sizes").mkdir()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(src / "mixed_sizes" / "0.png")
    Image.new("RGB", (48, 64), (90, 90, 90)).save(src / "mixed_sizes" / "1.png")
    (src / "notes.txt").write_text("not a video\n")
    dst = tmp_path_factory.mktemp("prepared") / "faces"
    out = io.StringIO()  # a session fixture cannot use capsys
    with contextlib.redirect_stdout(out):
        code = main(["prepare", str(src), str(dst), "--resolution", str(RESOLUTION), "--workers", "1"])
    return dst, code, out.getvalue()
