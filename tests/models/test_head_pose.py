"""The head-pose network's conventions: volume_pose puts the renderer's head points where the renderer draws them."""

import shutil
from pathlib import Path

import pytest
import torch

from models.checkpoints import load_checkpoint
from models.cli import main
from models.data.heads import SyntheticHeads, sample_identities, sample_motions
from models.data.heads.geometry import face_layout, head_landmarks, surface_z
from models.data.heads.params import DEFAULT_SCALE
from models.megaportraits.head_pose import (
    CANONICAL_SCALE,
    HEAD_POSE_PRESETS,
    HeadPoseNetwork,
    ImagePose,
    head_pose_config,
    volume_pose,
)
from models.megaportraits.warping import posed, unposed
from models.training.train_head_pose import HeadPoseTrainConfig, RealPoseFrames, rotation_angle_between, train_head_pose


def test_the_canonical_scale_is_the_renderers_default_head_size() -> None:
    assert CANONICAL_SCALE == DEFAULT_SCALE


def _poses_and_points(count: int, seed: int) -> tuple[ImagePose, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    identities = sample_identities(count, generator=generator)
    motions = sample_motions(count, generator=generator)
    layout = face_layout(identities, motions)
    hx, hy = head_landmarks(layout)  # B×68 each
    head = torch.stack([hx, hy, surface_z(hx, hy, layout)], dim=2)  # B×68×3, head space (y up, z to the camera)
    pixels = SyntheticHeads(resolution=128).landmarks(identities, motions)  # B×68×2 pixels, y down
    pose = ImagePose(
        rotation=torch.stack([motions.yaw, motions.pitch, motions.roll], dim=1),
        translation=torch.stack([motions.tx, motions.ty], dim=1),
        scale=motions.scale,
    )
    return pose, head, pixels


def test_volume_pose_puts_head_points_where_the_renderer_projects_them() -> None:
    pose, head, pixels = _poses_and_points(6, seed=3)
    canonical = CANONICAL_SCALE * head * torch.tensor([1.0, -1.0, -1.0])  # s₀ F p: the canonical volume's points
    warp_pose = volume_pose(pose)
    in_volume = posed(canonical[:, None, None], rotation=warp_pose.rotation, translation=warp_pose.translation, scale=warp_pose.scale)
    in_volume = in_volume[:, 0, 0]  # B×1×1×68×3 -> B×68×3
    expected = pixels / 128 * 2 - 1  # pixels -> normalised volume x (right), y (down)
    torch.testing.assert_close(in_volume[..., :2], expected, atol=1e-4, rtol=0)
    back = unposed(in_volume[:, None, None], rotation=warp_pose.rotation, translation=warp_pose.translation, scale=warp_pose.scale)
    torch.testing.assert_close(back[:, 0, 0], canonical, atol=1e-5, rtol=0)


def test_a_wrong_sign_would_be_caught() -> None:
    pose, head, pixels = _poses_and_points(6, seed=4)
    canonical = CANONICAL_SCALE * head * torch.tensor([1.0, -1.0, -1.0])
    flipped = volume_pose(pose._replace(rotation=pose.rotation * torch.tensor([-1.0, 1.0, 1.0])))  # yaw's sign flipped
    in_volume = posed(canonical[:, None, None], rotation=flipped.rotation, translation=flipped.translation, scale=flipped.scale)
    assert (in_volume[:, 0, 0, :, :2] - (pixels / 128 * 2 - 1)).abs().max() > 0.02


@pytest.mark.parametrize("preset", list(HEAD_POSE_PRESETS))
def test_network_shapes_and_freezing(preset: str) -> None:
    config = head_pose_config(preset)
    network = HeadPoseNetwork(config=config)
    images = torch.rand(2, 3, 96, 96)
    pose = network(images)
    assert pose.rotation.shape == (2, 3) and pose.translation.shape == (2, 2) and pose.scale.shape == (2,)
    network.freeze()
    assert not any(p.requires_grad for p in network.parameters())
    network.train()
    assert not network.training  # stays in eval mode inside a training parent


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown head-pose preset"):
        head_pose_config("vgg")


# -- training -----------------------------------------------------------------------------------------


def test_training_records_its_held_out_errors_and_mixes_real_frames_with_solved_poses(
    prepared_videos: tuple[Path, int, str], tmp_path: Path, one_torch_thread: None
) -> None:
    folder, code, _ = prepared_videos
    assert code == 0
    out = tmp_path / "pose.pt"
    config = HeadPoseTrainConfig(
        out=str(out), preset="tiny", renders=16, render_resolution=64, steps=2, batch_size=4, held_out=8, videos=str(folder)
    )
    summary = train_head_pose(config, progress=False)
    checkpoint = load_checkpoint(out)
    assert checkpoint["kind"] == "megaportraits-head-pose" and checkpoint["train_config"]["videos"] == str(folder)
    assert checkpoint["held_out_random"]["count"] == 8 and summary.held_out_clips.rotation_deg > 0
    frames = RealPoseFrames(str(folder), resolution=64)
    images, labels = frames.batch(3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 64, 64) and labels.shape == (3, 6)
    assert labels[:, 5].min() > 0.5  # a solved scale near the renderer's head size, not zeros


def test_a_folder_without_solved_poses_is_refused_in_one_line(
    prepared_videos: tuple[Path, int, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _, _ = prepared_videos
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    for poses in old.glob("videos/*/poses.npy"):
        poses.unlink()
    out = tmp_path / "pose.pt"
    assert main(["head-pose", "--out", str(out), "--preset", "tiny", "--resolution", "64", "--videos", str(old), "--steps", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("megalive-train head-pose: ") and error.count("\n") == 1 and "poses.npy" in error
    assert not out.exists()


def test_rotation_angle_between_is_the_geodesic_angle() -> None:
    first = torch.tensor([[0.1, -0.2, 0.05]])
    assert float(rotation_angle_between(first, first)) < 1e-3
    turned = first + torch.tensor([[0.3, 0.0, 0.0]])
    assert abs(float(rotation_angle_between(torch.zeros(1, 3), torch.tensor([[0.3, 0.0, 0.0]]))) - 0.3) < 1e-5
    assert float(rotation_angle_between(first, turned)) > 0.2
