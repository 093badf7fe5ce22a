"""Meta-learning episodes of the few-shot talking heads (Zakharov et al. 2019, DESIGN §4.4): K frames of one training
video to embed, and one more frame of it to reconstruct from its landmarks.

    video i (one identity):  frames = K frames of i, each with its landmark image
                             target = another frame of i: its picture, alpha, 68 landmarks and landmark image
                             video  = i (the discriminator's row W_i)

Two sources, one sample type:
    SyntheticEpisodes  SyntheticHeads identities rendered once when the dataset is made (``identities`` videos of
                       ``frames_per_video`` frames each: half frames of a talking-head clip, half random poses and
                       expressions, so the generator meets the poses a cross driver brings), kept in memory as uint8
    VideoEpisodes      a `megalive-train prepare` folder: each video is one row of W; frames where the mesh found a face

Every sample is a pure function of (seed, index), so a resumed run sees exactly the data it would have seen, and a
held-out set is another seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from contract.landmark_image import draw_landmark_image
from models.data.heads import HeadMotion, SyntheticHeads, sample_clip, sample_identities, sample_motions
from models.data.synthetic_pairs import derived_seed
from models.data.video_folder import VideoFolder


class EpisodeSample(NamedTuple):
    """One episode (a DataLoader batches each field). Images in [0, 1]; landmarks in pixels (pixel i spans [i, i+1))."""

    frames: Tensor  # K×3×H×W: the video's frames to embed
    frame_landmark_images: Tensor  # K×3×H×W: their landmark images
    target: Tensor  # 3×H×W: another frame of the video
    target_alpha: Tensor  # 1×H×W
    target_landmarks: Tensor  # 68×2
    target_landmark_image: Tensor  # 3×H×W
    video: Tensor  # 0-dim int64: the video's row of the discriminator


def landmark_image_tensor(points: np.ndarray, size: int) -> Tensor:
    """68×2 pixels -> 3×size×size float32 (contract/landmark_image.py)."""
    return torch.from_numpy(draw_landmark_image(points, size=size)).permute(2, 0, 1)  # H×W×3 -> 3×H×W


@dataclass(frozen=True)
class SyntheticEpisodesConfig:
    resolution: int
    shots: int = 8  # K frames embedded per episode
    identities: int = 600  # training videos (one identity each)
    frames_per_video: int = 16
    length: int = 1_000_000  # episodes per epoch (each index a different draw)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shots < 1 or self.identities < 1 or self.length < 1:
            raise ValueError("episodes need shots, identities and length of at least 1")
        if self.frames_per_video < self.shots + 1:
            raise ValueError(f"frames_per_video ({self.frames_per_video}) must exceed shots ({self.shots}): K frames plus a target")


class SyntheticEpisodes(Dataset[EpisodeSample]):
    """``dataset[index]``: one EpisodeSample of the SyntheticHeads videos rendered at construction."""

    def __init__(self, *, config: SyntheticEpisodesConfig, progress: bool = False) -> None:
        self.config = config
        self.num_videos = config.identities
        heads = SyntheticHeads(resolution=config.resolution)
        generator = torch.Generator().manual_seed(derived_seed(config.seed, "fewshot-identities"))
        identities = sample_identities(config.identities, generator=generator)
        count, size = config.frames_per_video, config.resolution
        self.rgb = torch.empty(config.identities, count, 3, size, size, dtype=torch.uint8)  # N×F×3×H×W
        self.alpha = torch.empty(config.identities, count, 1, size, size, dtype=torch.uint8)
        self.landmarks = torch.empty(config.identities, count, 68, 2)
        for video in tqdm(range(config.identities), desc="rendering videos", unit="video", disable=not progress):
            motion_generator = torch.Generator().manual_seed(derived_seed(config.seed, "fewshot-video", video))
            clip = sample_clip(count - count // 2, generator=motion_generator)
            motions = HeadMotion.cat([clip, sample_motions(count // 2, generator=motion_generator)])
            render = heads.render(identities[[video]], motions)  # one identity for every motion
            self.rgb[video] = (render.rgb * 255).round().to(torch.uint8)
            self.alpha[video] = (render.alpha * 255).round().to(torch.uint8)
            self.landmarks[video] = render.landmarks

    def __len__(self) -> int:
        return self.config.length

    def __getitem__(self, index: int) -> EpisodeSample:
        if not 0 <= index < len(self):
            raise IndexError(f"episode {index} out of range [0, {len(self)})")
        config = self.config
        generator = torch.Generator().manual_seed(derived_seed(config.seed, "fewshot-episode", index))
        video = int(torch.randint(config.identities, (1,), generator=generator))
        chosen = torch.randperm(config.frames_per_video, generator=generator)[: config.shots + 1].tolist()
        *shots, target = chosen
        size = config.resolution
        landmarks = self.landmarks[video].numpy()
        return EpisodeSample(
            frames=self.rgb[video, shots].float() / 255,
            frame_landmark_images=torch.stack([landmark_image_tensor(landmarks[frame], size) for frame in shots]),
            target=self.rgb[video, target].float() / 255,
            target_alpha=self.alpha[video, target].float() / 255,
            target_landmarks=self.landmarks[video, target].clone(),
            target_landmark_image=landmark_image_tensor(landmarks[target], size),
            video=torch.tensor(video),
        )

    def describe(self) -> dict[str, object]:
        config = self.config
        return {
            "source": "synthetic",
            "renderer": "SyntheticHeads",
            "resolution": config.resolution,
            "videos": config.identities,
            "frames_per_video": config.frames_per_video,
            "shots": config.shots,
            "seed": config.seed,
            "episodes": "per video one identity: half its frames a talking-head clip, half random poses and expressions; "
            "an episode embeds K frames of a video and reconstructs another of its frames from that frame's landmarks",
        }


class VideoEpisodes(Dataset[EpisodeSample]):
    """``dataset[index]``: one EpisodeSample from a `megalive-train prepare` folder (each video one row of W)."""

    def __init__(self, root: str | Path, *, resolution: int, shots: int, seed: int = 0, length: int = 1_000_000) -> None:
        self.folder = VideoFolder(root, resolution=resolution, seed=seed)
        short = [video.name for video in self.folder.videos if video.usable.size < shots + 1]
        if short:
            raise ValueError(f"{root}: videos {short[:3]} have fewer than K + 1 = {shots + 1} frames with a face")
        self.resolution, self.shots, self.seed, self.length = resolution, shots, seed, length
        self.num_videos = len(self.folder.videos)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> EpisodeSample:
        if not 0 <= index < len(self):
            raise IndexError(f"episode {index} out of range [0, {len(self)})")
        rng = np.random.default_rng(derived_seed(self.seed, "fewshot-video-episode", index))
        video = int(rng.integers(self.num_videos))
        *shots, target = (int(frame) for frame in rng.choice(self.folder.videos[video].usable, size=self.shots + 1, replace=False))
        size = self.resolution
        points = np.asarray(self.folder.arrays(video).landmarks, np.float64) * size  # crop units -> pixels
        images = [self.folder.frame_image(video, frame) for frame in shots]
        target_rgb, target_alpha = self.folder.frame_image(video, target)
        return EpisodeSample(
            frames=torch.stack([rgb for rgb, _ in images]),
            frame_landmark_images=torch.stack([landmark_image_tensor(points[frame], size) for frame in shots]),
            target=target_rgb,
            target_alpha=target_alpha,
            target_landmarks=torch.from_numpy(points[target].astype(np.float32)),
            target_landmark_image=landmark_image_tensor(points[target], size),
            video=torch.tensor(video),
        )

    def describe(self) -> dict[str, object]:
        return {**self.folder.describe(), "shots": self.shots, "episodes": "K face frames of a video embedded, another reconstructed"}
