"""`megalive-train prepare` on a clip made from a real photograph (skimage's astronaut moved by affine warps), as an
MP4 and as a frame folder at another resolution, beside bad inputs; VideoFolder reading the result."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.landmarks import canonical_ibug68
from models.cli import main
from models.data.face_pose import POSE_NAMES, load_poses
from models.data.paired import DatasetError
from models.data.prepare import PrepareConfig, discover_inputs, smooth_over_time
from models.data.video_folder import VideoFolder
from tests.models.conftest import FOLDER_CANVAS, FRAMES, MP4_CANVAS, OFFSET, RESOLUTION, poses


def test_smoothing_keeps_motion_and_cuts_jitter() -> None:
    time = np.arange(40, dtype=np.float64)
    motion = np.stack([0.05 * time**2 - time, 3 * time], axis=1)  # 40×2: quadratic and linear tracks
    np.testing.assert_allclose(smooth_over_time(motion, window=9), motion, atol=1e-9)  # no lag, ends included
    noise = np.random.default_rng(0).normal(0, 1, (400, 1))
    assert smooth_over_time(noise, window=15).std() < 0.6 * noise.std()
    np.testing.assert_array_equal(smooth_over_time(motion[:2], window=9), motion[:2])  # too short to fit: unchanged


@pytest.fixture(scope="module")
def prepared(prepared_videos: tuple[Path, int, str]) -> tuple[Path, int, str]:
    return prepared_videos


def test_prepare_finds_the_face_in_every_frame_of_both_inputs(prepared: tuple[Path, int, str]) -> None:
    dst, code, _ = prepared
    assert code == 0
    meta = json.loads((dst / "meta.json").read_text())
    videos = {video["name"]: video for video in meta["videos"]}
    assert set(videos) == {"astronaut", "astronaut_frames"}
    assert videos["astronaut"]["source_size"] == [640, 480] and videos["astronaut_frames"]["source_size"] == [800, 600]
    for name, canvas in (("astronaut", MP4_CANVAS), ("astronaut_frames", FOLDER_CANVAS)):
        folder = dst / "videos" / name
        found = np.load(folder / "face_found.npy")
        frames, masks = np.load(folder / "frames.npy"), np.load(folder / "masks.npy")
        landmarks, boxes = np.load(folder / "landmarks.npy"), np.load(folder / "boxes.npy")
        assert found.shape == (FRAMES,) and found.all() and videos[name]["face_fraction"] == 1.0
        assert frames.shape == (FRAMES, RESOLUTION, RESOLUTION, 3) and frames.dtype == np.uint8
        assert masks.shape == (FRAMES, RESOLUTION, RESOLUTION) and landmarks.shape == (FRAMES, 68, 2)
        x, y = landmarks[..., 0], landmarks[..., 1]  # FRAMES×68 each, crop units
        assert landmarks.min() >= 0 and landmarks.max() <= 1
        assert np.all(y[:, 36:48].mean(axis=1) < y[:, 48:68].mean(axis=1))  # eyes above the mouth
        assert np.all(x[:, 36] < x[:, 45]) and np.all(y[:, 27] < y[:, 30])  # eye corners; nose runs down
        assert np.abs(landmarks - canonical_ibug68()).mean() < 0.04  # framed like the synthetic heads
        # The mask holds the face: high at the nose tip and over the face on average.
        nose = (landmarks[:, 30] * RESOLUTION).astype(int)  # FRAMES×2 pixels
        assert np.all(masks[np.arange(FRAMES), nose[:, 1], nose[:, 0]] > 128)
        left, top = (landmarks[:, 36:48].min(axis=1) * RESOLUTION).astype(int).T
        right, bottom = (landmarks[:, 48:60].max(axis=1) * RESOLUTION).astype(int).T
        assert all(masks[f, top[f] : bottom[f], left[f] : right[f]].mean() > 128 for f in range(FRAMES))
        # The box follows the known motion with no lag (non-causal smoothing): each frame's box is the first
        # frame's moved and scaled as the photo was, within two source pixels.
        (scale_0, shift_0), base = poses()[0], canvas[2]
        centre_in_photo = (boxes[0, :2] / base - np.add(OFFSET, shift_0)) / scale_0
        for box, (scale, shift) in zip(boxes, poses(), strict=True):
            np.testing.assert_allclose(box[:2], base * (centre_in_photo * scale + np.add(OFFSET, shift)), atol=2.0)
            assert abs(box[2] / (boxes[0, 2] * scale / scale_0) - 1) < 0.03
    assert (dst / "preview.png").is_file()


def test_prepare_solves_one_head_pose_per_frame(prepared: tuple[Path, int, str]) -> None:
    dst, _, _ = prepared
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["poses"]["file"] == "poses.npy" and meta["poses"]["labels"] == list(POSE_NAMES)
    for video in meta["videos"]:
        poses = load_poses(dst / "videos" / video["name"], frames=video["frames"])  # FRAMES×6
        assert poses.shape == (FRAMES, 6) and poses.dtype == np.float32 and np.isfinite(poses).all()
        # The photo only moves and zooms, and each crop follows it: one head pose in every crop, near frontal (the
        # astronaut looks into the camera), centred and at the synthetic heads' size, as the crops are framed.
        assert np.degrees(np.ptp(poses[:, :3], axis=0)).max() < 3.0, np.degrees(np.ptp(poses[:, :3], axis=0))
        assert np.degrees(np.abs(poses[:, :3])).max() < 10.0, np.degrees(poses[:, :3])
        assert np.abs(poses[:, 3:5]).max() < 0.06 and np.abs(poses[:, 5] - 0.68).max() < 0.06, poses[:, 3:]


def test_bad_inputs_are_listed_with_reasons_and_the_rest_prepared(prepared: tuple[Path, int, str]) -> None:
    dst, code, stdout = prepared
    assert code == 0 and "prepared 2 video(s)" in stdout and "skipped 4" in stdout
    meta = json.loads((dst / "meta.json").read_text())
    reasons = {entry["source"]: entry["reason"] for entry in meta["skipped"]}
    assert set(reasons) == {"broken.mp4", "empty.mp4", "grey.mp4", "mixed_sizes"}  # notes.txt is not an input
    assert reasons["broken.mp4"].startswith("unreadable") and "\n" not in reasons["broken.mp4"]
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert reasons["grey.mp4"] == "no face found in any of 6 frames"
    assert "mixed sizes" in reasons["mixed_sizes"]
    assert sorted(path.name for path in (dst / "videos").iterdir()) == ["astronaut", "astronaut_frames"]  # no leftovers
    assert not [path for path in dst.parent.iterdir() if path.name.startswith(".")]  # no staging folder left
    assert meta["resolution"] == RESOLUTION and "prepare" in meta["command"]


def test_video_folder_reads_back_reenactment_samples(prepared: tuple[Path, int, str]) -> None:
    dst, _, _ = prepared
    dataset = VideoFolder(dst, seed=3)
    assert len(dataset) == 2 * FRAMES and len(dataset.videos) == 2
    sample = dataset[5]
    for image in (sample.source, sample.driver, sample.cross_driver, sample.cross_target):
        assert image.shape == (3, RESOLUTION, RESOLUTION) and image.dtype == torch.float32
    assert sample.driver_alpha.shape == sample.cross_target_alpha.shape == (1, RESOLUTION, RESOLUTION)
    assert 0 <= float(sample.source.min()) and float(sample.source.max()) <= 1 and float(sample.driver_alpha.max()) > 0.5
    assert float(sample.cross_valid) == 0.0 and float(sample.cross_target.abs().sum()) == 0.0
    video, source, driver, other, _ = dataset.draw(5)
    assert source != driver and other != video
    again = pickle.loads(pickle.dumps(dataset))  # what a spawned DataLoader worker gets: no arrays inside
    assert not again._open and torch.equal(again[5].driver, sample.driver)  # same draw for the same (seed, index)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch.source.shape == (3, 3, RESOLUTION, RESOLUTION) and batch.cross_valid.shape == (3,)
    smaller = VideoFolder(dst, resolution=32, length=7)
    assert len(smaller) == 7 and smaller[0].driver.shape == (3, 32, 32)
    assert smaller.describe()["videos"] == 2


def test_video_folder_refuses_missing_and_corrupt_folders(prepared: tuple[Path, int, str], tmp_path: Path) -> None:
    dst, _, _ = prepared
    with pytest.raises(DatasetError, match="not found"):
        VideoFolder(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no meta.json"):
        VideoFolder(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(dst, copy)
    frames = copy / "videos" / "astronaut" / "frames.npy"
    frames.write_bytes(frames.read_bytes()[: frames.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.raises(DatasetError, match="frames.npy is corrupt or truncated"):
        VideoFolder(copy)
    (copy / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable"):
        VideoFolder(copy)


def _one_line_refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["prepare", *argv]) == 2
    printed = [line for line in re.split(r"[\r\n]+", capsys.readouterr().err) if line.strip()]
    messages = [line for line in printed if not line.startswith("preparing videos")]  # beside the progress bar
    assert len(messages) == 1 and messages[0].startswith("megalive-train prepare: ")
    return messages[0]


def test_cli_refuses_an_existing_dst_a_missing_src_and_nothing_to_prepare(
    prepared: tuple[Path, int, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst, _, _ = prepared
    before = (dst / "meta.json").read_bytes()
    assert "exists already" in _one_line_refusal(capsys, str(tmp_path), str(dst))
    assert (dst / "meta.json").read_bytes() == before  # untouched
    assert "no such folder" in _one_line_refusal(capsys, str(tmp_path / "missing"), str(tmp_path / "out"))
    assert "no videos" in _one_line_refusal(capsys, str(tmp_path), str(tmp_path / "out"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "broken.mov").write_bytes(b"\x00" * 100)
    assert "no video could be prepared" in _one_line_refusal(capsys, str(bad), str(tmp_path / "out"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad"]  # no DST, no staging folder
    assert "--min-face-fraction must be in [0, 1]" in _one_line_refusal(capsys, str(bad), str(tmp_path / "o"), "--min-face-fraction", "2")


def test_dry_run_lists_inputs_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "person1" / "clip1").mkdir(parents=True)
    (tmp_path / "person1" / "clip1" / "a.mp4").write_bytes(b"x")
    (tmp_path / "person1" / "clip1" / "a.mov").write_bytes(b"x")
    (tmp_path / "person2").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "person2" / "0.png")
    inputs = discover_inputs(tmp_path)
    assert [(video.name, video.person, video.kind) for video in inputs] == [
        ("person1__clip1__a", "person1", "video"),
        ("person1__clip1__a-2", "person1", "video"),
        ("person2", "person2", "frames"),
    ]
    assert main(["prepare", str(tmp_path), str(tmp_path / "out"), "--dry-run", "--resolution", "128"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"] == asdict(PrepareConfig(resolution=128)) and len(printed["inputs"]) == 3
    assert not (tmp_path / "out").exists()
