"""Pretrain the teacher's head-pose network (models/megaportraits/head_pose.py) on SyntheticHeads renders.

The renders (full frames, background included, as the teacher sees its sources and drivers) are made once with
their exact pose labels: independent random motions and, ``clip_share`` of them, frames of talking-head clips.
Each step draws a batch and augments it as the teacher's drivers are augmented (colour jitter, thin-plate-spline
warp; models/training/augment.py) plus a random blur, so the frozen network reads augmented drivers as well as
clean sources. Loss: smooth L1 on the six standardised labels (yaw, pitch, roll, tx, ty, scale).

With ``videos`` (a `megalive-train prepare` folder), ``real_share`` of every batch are real frames labelled with the
head poses solved from mediapipe's face mesh against its canonical mesh (models/data/face_pose.py, poses.npy); a
folder prepared before poses were solved is refused.

The checkpoint (kind HEAD_POSE_KIND) holds the network, its preset, the render resolution, and its errors on
renders of identities and motions it never saw (degrees per angle and the mean angle between true and predicted
rotations; translation and scale in image half-widths). The teacher refuses a head-pose network trained on
renders smaller than its own images (it would read them upsampled).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from models.checkpoints import HEAD_POSE_KIND, check_kind, load_checkpoint, save_checkpoint
from models.data.face_pose import load_poses
from models.data.heads import HeadMotion, SyntheticHeads, sample_identities, sample_motion_pool
from models.data.paired import DatasetError
from models.data.synthetic_pairs import derived_seed
from models.data.video_folder import VideoFolder
from models.megaportraits.head_pose import HEAD_POSE_PRESETS, LABEL_NAMES, HeadPoseNetwork, ImagePose, head_pose_config
from models.megaportraits.warping import rotation_matrix
from models.training.augment import DriverAugmentation, gaussian_blur
from models.training.common import TrainingError, adam_with_cosine


@dataclass(frozen=True)
class HeadPoseTrainConfig:
    out: str  # checkpoint path
    preset: str = "cpu"  # HEAD_POSE_PRESETS
    renders: int = 8000  # training images, rendered once
    render_resolution: int = 128  # the teacher's image size (cpu128)
    clip_share: float = 0.5  # of the renders, frames of talking-head clips; the rest independent random motions
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    colour_jitter: float = 0.5  # as the teacher's drivers
    warp: float = 0.06
    max_blur: float = 1.0  # Gaussian blur sigma in pixels of a 128 px image, drawn per image from [0, max_blur]
    augmented_share: float = 0.5  # of each batch, the share augmented like a driver (the rest clean, like a source)
    videos: str | None = None  # a `megalive-train prepare` folder with solved poses; None: renders only
    real_share: float = 0.5  # with videos: the share of each batch drawn from its frames
    seed: int = 11  # neither the teacher's training pool (0) nor the benchmark's held-out seed
    held_out: int = 512
    device: str = "cpu"
    command: str = ""


def check_head_pose_config(config: HeadPoseTrainConfig) -> None:
    """Cheap checks before anything is rendered; raises TrainingError (one line)."""
    if config.preset not in HEAD_POSE_PRESETS:
        raise TrainingError(f"unknown head-pose preset {config.preset!r} (known: {', '.join(HEAD_POSE_PRESETS)})")
    problems = [message for bad, message in (
        (config.steps < 1 or config.batch_size < 1, "--steps and --batch must be at least 1"),
        (config.renders < config.batch_size, "--renders must be at least --batch"),
        (config.render_resolution < 32, "--resolution must be at least 32"),
        (not all(0 <= share <= 1 for share in (config.clip_share, config.augmented_share, config.real_share)), "shares must be in [0, 1]"),
        (config.held_out < 1, "--held-out must be at least 1"),
    ) if bad]  # fmt: skip
    if problems:
        raise TrainingError(problems[0])
    try:
        DriverAugmentation(colour=config.colour_jitter, warp=config.warp)
    except ValueError as error:
        raise TrainingError(f"augmentation: {error}") from None
    if config.videos is not None:
        RealPoseFrames(config.videos, resolution=config.render_resolution)  # reads meta.json and poses.npy: cheap


class RealPoseFrames:
    """The face frames of a prepared video folder with their solved head poses (labels in LABEL_NAMES order)."""

    def __init__(self, folder: str, *, resolution: int) -> None:
        try:
            self.videos = VideoFolder(folder, resolution=resolution)
            poses = [
                load_poses(self.videos.root / "videos" / info.name, frames=info.frames) for info in self.videos.videos
            ]  # per video N×6
        except DatasetError as error:
            raise TrainingError(" ".join(str(error).split())) from None
        self.frames = [(video, int(frame)) for video, info in enumerate(self.videos.videos) for frame in info.usable]
        self.labels = torch.stack([torch.from_numpy(np.array(poses[video][frame])) for video, frame in self.frames])  # F×6
        if not self.frames:
            raise TrainingError(f"--videos {folder}: no usable face frames")

    def batch(self, count: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``count`` random frames (count×3×R×R in [0, 1]) and their labels (count×6)."""
        index = torch.randint(len(self.frames), (count,), generator=generator)
        images = torch.stack([self.videos.frame_image(*self.frames[int(i)])[0] for i in index])
        return images, self.labels[index]


def motion_labels(motion: HeadMotion) -> Tensor:
    """The renderer's pose of each motion: B×6 in LABEL_NAMES order."""
    return torch.stack([motion.yaw, motion.pitch, motion.roll, motion.tx, motion.ty, motion.scale], dim=1)


def render_pose_set(*, count: int, resolution: int, clip_share: float, seed: int, progress: bool) -> tuple[Tensor, Tensor]:
    """``count`` full-frame renders (N×3×R×R uint8) and their exact pose labels (N×6)."""
    generator = torch.Generator().manual_seed(seed)
    identities = sample_identities(count, generator=generator)
    motion = sample_motion_pool(count, clip_share=clip_share, generator=generator)
    heads = SyntheticHeads(resolution=resolution)
    images = torch.empty(count, 3, resolution, resolution, dtype=torch.uint8)
    chunk = 64
    with torch.inference_mode(), tqdm(total=count, desc="rendering", unit="image", disable=not progress) as bar:
        for start in range(0, count, chunk):
            part = slice(start, min(start + chunk, count))
            images[part] = (heads.render(identities[part], motion[part]).rgb * 255).round().clamp(0, 255).to(torch.uint8)
            bar.update(part.stop - part.start)
    return images, motion_labels(motion)


@dataclass(frozen=True)
class PoseErrors:
    yaw_deg: float  # mean absolute error
    pitch_deg: float
    roll_deg: float
    rotation_deg: float  # mean angle of R_true^T R_predicted
    translation: float  # mean |Δ(tx, ty)| in image half-widths
    scale: float  # mean |Δscale| relative to the true scale
    count: int

    def describe(self) -> str:
        return (
            f"rotation {self.rotation_deg:.2f}° (yaw {self.yaw_deg:.2f}°, pitch {self.pitch_deg:.2f}°, roll {self.roll_deg:.2f}°), "
            f"translation {self.translation:.4f}, scale {100 * self.scale:.2f} % on {self.count} renders"
        )


def rotation_angle_between(first: Tensor, second: Tensor) -> Tensor:
    """The angle (radians, B) of the rotation taking angles ``first`` to ``second`` (B×3 yaw, pitch, roll each)."""
    relative = rotation_matrix(first).transpose(1, 2) @ rotation_matrix(second)  # B×3×3
    cosine = ((relative.diagonal(dim1=1, dim2=2).sum(dim=1) - 1) / 2).clamp(-1, 1)
    return torch.arccos(cosine)


def pose_errors(predicted: ImagePose, labels: Tensor) -> PoseErrors:
    """Errors of predictions against true labels (B×6)."""
    truth = ImagePose.from_labels(labels)
    degrees = (predicted.rotation - truth.rotation).abs().mean(dim=0) * 180 / math.pi  # 3
    # Both in the renderer's convention; the angle between two rotations is the same in any fixed frame.
    angle = rotation_angle_between(truth.rotation, predicted.rotation).mean() * 180 / math.pi
    return PoseErrors(
        yaw_deg=float(degrees[0]),
        pitch_deg=float(degrees[1]),
        roll_deg=float(degrees[2]),
        rotation_deg=float(angle),
        translation=float((predicted.translation - truth.translation).norm(dim=1).mean()),
        scale=float(((predicted.scale - truth.scale).abs() / truth.scale).mean()),
        count=labels.shape[0],
    )


@torch.inference_mode()
def held_out_pose_errors(network: HeadPoseNetwork, *, seed: int, count: int, resolution: int, clip_share: float) -> PoseErrors:
    images, labels = render_pose_set(count=count, resolution=resolution, clip_share=clip_share, seed=seed, progress=False)
    predictions = [network(images[start : start + 64].float() / 255) for start in range(0, count, 64)]
    predicted = ImagePose(*(torch.cat(parts) for parts in zip(*predictions, strict=True)))
    return pose_errors(predicted, labels)


@dataclass(frozen=True)
class HeadPoseSummary:
    path: Path
    steps: int
    final_loss: float
    seconds: float
    held_out_random: PoseErrors
    held_out_clips: PoseErrors

    def describe(self) -> str:
        return "\n".join([
            f"trained the head-pose network ({self.steps} steps, {self.seconds / 60:.1f} min) -> {self.path}; on held-out renders:",
            f"  random motions: {self.held_out_random.describe()}",
            f"  clip frames:    {self.held_out_clips.describe()}",
        ])  # fmt: skip


def train_head_pose(config: HeadPoseTrainConfig, *, progress: bool = True) -> HeadPoseSummary:
    check_head_pose_config(config)
    began = time.perf_counter()
    torch.manual_seed(derived_seed(config.seed, "weights"))
    network = HeadPoseNetwork(config=head_pose_config(config.preset)).to(config.device)
    images, labels = render_pose_set(
        count=config.renders, resolution=config.render_resolution, clip_share=config.clip_share,
        seed=derived_seed(config.seed, "renders"), progress=progress,
    )  # fmt: skip
    targets = network.standardise(labels.to(config.device))  # N×6
    real = RealPoseFrames(config.videos, resolution=config.render_resolution) if config.videos is not None else None
    real_count = round(config.batch_size * config.real_share) if real is not None else 0
    augmentation = DriverAugmentation(colour=config.colour_jitter, warp=config.warp)
    optimiser, scheduler = adam_with_cosine(
        network.parameters(), learning_rate=config.learning_rate, final_learning_rate=config.learning_rate / 100, steps=config.steps
    )
    generator = torch.Generator().manual_seed(derived_seed(config.seed, "batches"))
    augmented = round(config.batch_size * config.augmented_share)
    loss = torch.tensor(math.nan)
    network.train()
    for _ in tqdm(range(config.steps), desc="head pose", unit="step", disable=not progress):
        index = torch.randint(config.renders, (config.batch_size - real_count,), generator=generator)
        batch = images[index].float() / 255  # B×3×R×R
        batch_targets = targets[index.to(config.device)]
        if real is not None and real_count:
            frames, frame_labels = real.batch(real_count, generator=generator)
            batch = torch.cat([frames, batch])  # real frames first: the augmented share covers them too
            batch_targets = torch.cat([network.standardise(frame_labels.to(config.device)), batch_targets])
        if augmented:
            batch = torch.cat([augmentation(batch[:augmented], generator=generator), batch[augmented:]])
        sigma = torch.rand(config.batch_size, generator=generator) * (config.max_blur * config.render_resolution / 128)
        batch = gaussian_blur(batch, sigma).to(config.device)
        loss = F.smooth_l1_loss(network.standardised(batch), batch_targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
    network = network.cpu().eval()
    held_out = {
        name: held_out_pose_errors(
            network, seed=derived_seed(config.seed, "held-out", name), count=config.held_out,
            resolution=config.render_resolution, clip_share=share,
        )
        for name, share in (("random", 0.0), ("clips", 1.0))
    }  # fmt: skip
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        {
            "model": network.state_dict(),
            "model_config": asdict(network.config),
            "train_config": asdict(config),
            "labels": list(LABEL_NAMES),
            "held_out_random": asdict(held_out["random"]),
            "held_out_clips": asdict(held_out["clips"]),
        },
        out,
        kind=HEAD_POSE_KIND,
    )
    return HeadPoseSummary(
        path=out, steps=config.steps, final_loss=float(loss.detach()), seconds=time.perf_counter() - began,
        held_out_random=held_out["random"], held_out_clips=held_out["clips"],
    )  # fmt: skip


def read_head_pose_checkpoint(path: Path, *, image_resolution: int) -> dict[str, Any]:
    """A head-pose checkpoint for a teacher making ``image_resolution`` px images; anything else raises
    TrainingError (one line): another kind, an unknown preset, or renders smaller than the teacher's images."""
    if not path.is_file():
        raise TrainingError(f"--pose-network {path}: no such file (make one with `megalive-train head-pose`)")
    checkpoint = load_checkpoint(path)
    check_kind(checkpoint, HEAD_POSE_KIND, where=f"--pose-network {path}")
    preset = checkpoint.get("train_config", {}).get("preset")
    if preset not in HEAD_POSE_PRESETS or checkpoint.get("model_config") != asdict(head_pose_config(preset)):
        raise TrainingError(f"--pose-network {path}: its network does not match any head-pose preset (preset {preset!r})")
    trained_at = int(checkpoint["train_config"].get("render_resolution", 0))
    if trained_at < image_resolution:
        raise TrainingError(
            f"--pose-network {path} was trained on {trained_at} px renders; this teacher makes {image_resolution} px images "
            f"(train one with `megalive-train head-pose --resolution {image_resolution}`)"
        )
    return checkpoint


def load_head_pose_weights(network: HeadPoseNetwork, checkpoint: dict[str, Any], *, path: Path) -> None:
    """The checkpoint's weights into ``network`` (then frozen)."""
    try:
        network.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise TrainingError(f"--pose-network {path}: its weights do not fit: {str(error).splitlines()[0]}") from None
    network.freeze()


def head_pose_network_from_checkpoint(path: Path) -> HeadPoseNetwork:
    """The frozen network of a `megalive-train head-pose` checkpoint (TrainingError, one line, for anything else)."""
    checkpoint = read_head_pose_checkpoint(path, image_resolution=0)
    network = HeadPoseNetwork(config=head_pose_config(checkpoint["train_config"]["preset"]))
    load_head_pose_weights(network, checkpoint, path=path)
    return network
