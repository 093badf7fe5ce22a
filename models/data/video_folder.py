"""Training samples of the MegaPortraits base model from real video prepared by `megalive-train prepare`.

Reads the folder written by models/data/prepare.py (layout in its docstring): per video, memory-mapped uint8 crops
and masks, 68 landmarks in crop units and the face_found flags. A sample (DESIGN.md §4.1, §5):

    video v:               source = frame i,  driver = frame j ≠ i        (self-reenactment; target = driver)
    video v' ≠ v:          cross_driver = frame k                           (another person when there is one)
    cross_target, cross_target_alpha: zeros, and cross_valid = 0

Real video has no cross-reenactment ground truth (nobody filmed A making B's face), so ``VideoSample`` carries the
fields of ``ReenactmentSample`` plus ``cross_valid``: 1 where cross_target is real (SyntheticPairs; treat a
ReenactmentSample as cross_valid = 1), 0 here. A trainer that mixes or switches sources must, per batch element:

- weight the cross half's reconstruction terms (L1, mask, perceptual) by cross_valid (they are zero-filled here,
  and an unweighted L1 against zeros would teach the generator to paint black);
- show the discriminator only real images as "real": the self-reenactment drivers, and cross targets only where
  cross_valid = 1;
- keep every term that needs no target for the cross half: the generator's adversarial and feature-matching
  terms against real self-reenactment images, and the cycle/contrastive loss on motion descriptors, which is
  exactly the paper's signal for cross-driving (positives: the same driver; negatives: other videos' drivers).

Sampling is a pure function of (seed, index), like SyntheticPairs: any DataLoader worker or DDP rank draws the
same sample for an index, and a resumed run sees the data it would have seen. Source and driver come only from
frames where the mesh found a face (prepare keeps interpolated frames for continuity, flagged in face_found).

Arrays are opened lazily per process, memory-mapped (pages shared between DataLoader workers), and at most
``OPEN_VIDEOS`` videos stay mapped at once (a large tree would otherwise exhaust the kernel's map count); the
dataset pickles without them, so spawned workers reopen their own.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from models.data.paired import DatasetError, load_checked_array, read_format_meta
from models.data.prepare import PREPARED_FORMAT, PREPARED_VERSION
from models.data.synthetic_pairs import derived_seed

OPEN_VIDEOS = 64  # videos kept memory-mapped per process (least recently used closed first)


class VideoSample(NamedTuple):
    """One training sample (a DataLoader batches each field: 3×H×W -> B×3×H×W). Images in [0, 1]."""

    source: Tensor  # 3×H×W: video v, frame i
    driver: Tensor  # 3×H×W: video v, frame j (the self-reenactment target too)
    driver_alpha: Tensor  # 1×H×W: the driver's foreground mask
    cross_driver: Tensor  # 3×H×W: another video's frame
    cross_target: Tensor  # 3×H×W: zeros (no ground truth in real video; see cross_valid)
    cross_target_alpha: Tensor  # 1×H×W: zeros
    driver_landmarks: Tensor  # 68×2: the driver's iBUG landmarks in pixels of the sample's resolution
    cross_target_landmarks: Tensor  # 68×2: zeros (no cross target)
    cross_valid: Tensor  # 0-dim float32: 0 here, cross_target is not a target (module docstring)


class PreparedArrays(NamedTuple):
    """One prepared video's arrays (memory-mapped, read-only)."""

    frames: np.ndarray  # N×S×S×3 uint8
    masks: np.ndarray  # N×S×S uint8
    landmarks: np.ndarray  # N×68×2 float32, crop units
    boxes: np.ndarray  # N×3 float32, (centre x, centre y, side) in source pixels
    face_found: np.ndarray  # N bool


class VideoInfo(NamedTuple):
    name: str
    person: str
    frames: int
    usable: np.ndarray  # indices of frames with a found face (int64)


def _read_meta(root: Path) -> dict[str, Any]:
    return read_format_meta(
        root, data_format=PREPARED_FORMAT, version=PREPARED_VERSION, what="prepared video folder", made_by="megalive-train prepare"
    )


def open_arrays(folder: Path, *, frames: int, resolution: int) -> PreparedArrays:
    """The arrays of one prepared video, checked against the frame count and resolution in meta.json."""
    expected = {
        "frames": ((frames, resolution, resolution, 3), np.uint8),
        "masks": ((frames, resolution, resolution), np.uint8),
        "landmarks": ((frames, 68, 2), np.float32),
        "boxes": ((frames, 3), np.float32),
        "face_found": ((frames,), np.bool_),
    }
    return PreparedArrays(
        **{name: load_checked_array(folder / f"{name}.npy", shape=shape, dtype=dtype) for name, (shape, dtype) in expected.items()}
    )


class VideoFolder(Dataset[VideoSample]):
    """``dataset[index]``: one VideoSample drawn from a `megalive-train prepare` folder.

    resolution: the size the samples come out at (None: the folder's own); crops are resized (antialiased) when it
    differs, so one prepared folder serves several model sizes. length: samples per epoch (None: the number of
    usable frames, so an epoch shows about every frame once as a driver).
    """

    def __init__(self, root: str | Path, *, resolution: int | None = None, length: int | None = None, seed: int = 0) -> None:
        self.root = Path(root)
        meta = _read_meta(self.root)
        try:
            self.prepared_resolution = int(meta["resolution"])
            listed = [(str(video["name"]), str(video["person"]), int(video["frames"])) for video in meta["videos"]]
            self.skipped = len(meta.get("skipped", []))
        except (KeyError, TypeError, ValueError) as error:
            raise DatasetError(f"{self.root / 'meta.json'}: missing or malformed field ({error})") from None
        self.command = str(meta.get("command", ""))
        videos = []
        for name, person, frames in listed:
            arrays = open_arrays(self.root / "videos" / name, frames=frames, resolution=self.prepared_resolution)
            usable = np.flatnonzero(np.asarray(arrays.face_found))
            if usable.size >= 2:  # prepare guarantees it; a hand-edited folder may not
                videos.append(VideoInfo(name=name, person=person, frames=frames, usable=usable))
        if len(videos) < 2:
            raise DatasetError(
                f"{self.root} has {len(videos)} usable video(s); reenactment pairs need at least 2 (cross drivers come from another video)"
            )
        self.videos: tuple[VideoInfo, ...] = tuple(videos)
        self.resolution = self.prepared_resolution if resolution is None else int(resolution)
        if not 16 <= self.resolution <= 4096:
            raise ValueError(f"resolution must be in [16, 4096], got {self.resolution}")
        self.length = sum(video.usable.size for video in videos) if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length must be at least 1, got {self.length}")
        self.seed = seed
        people = [video.person for video in videos]
        # Per video: the videos its cross driver may come from (another person when there is one, else any other).
        self._cross_pool = tuple(
            np.array([k for k, other in enumerate(people) if other != person] or [k for k in range(len(videos)) if k != v])
            for v, person in enumerate(people)
        )
        self._open: OrderedDict[int, PreparedArrays] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # never pickle the mapped arrays (that would copy them); reopen in the worker
        return state

    def arrays(self, video: int) -> PreparedArrays:
        """The memory-mapped arrays of video ``video`` (index into ``self.videos``)."""
        if video in self._open:
            self._open.move_to_end(video)
            return self._open[video]
        info = self.videos[video]
        arrays = open_arrays(self.root / "videos" / info.name, frames=info.frames, resolution=self.prepared_resolution)
        self._open[video] = arrays
        if len(self._open) > OPEN_VIDEOS:
            self._open.popitem(last=False)
        return arrays

    def draw(self, index: int) -> tuple[int, int, int, int, int]:
        """(v, i, j, v', k) of the sample at ``index``: video, source and driver frames, cross video and frame."""
        rng = np.random.default_rng(derived_seed(self.seed, "video-sample", index))
        video = int(rng.integers(len(self.videos)))
        source, driver = (int(frame) for frame in rng.choice(self.videos[video].usable, size=2, replace=False))
        pool = self._cross_pool[video]
        other = int(pool[rng.integers(pool.size)])
        return video, source, driver, other, int(rng.choice(self.videos[other].usable))

    def frame_image(self, video: int, frame: int) -> tuple[Tensor, Tensor]:
        """RGB (3×H×W) and mask (1×H×W) of one frame, floats in [0, 1] at ``self.resolution``."""
        arrays = self.arrays(video)
        rgb = torch.from_numpy(np.array(arrays.frames[frame])).permute(2, 0, 1)  # S×S×3 -> 3×S×S
        alpha = torch.from_numpy(np.array(arrays.masks[frame]))[None]  # S×S -> 1×S×S
        image = torch.cat([rgb, alpha]).float().div(255)  # 4×S×S
        if self.resolution != self.prepared_resolution:
            image = F.interpolate(
                image[None], size=(self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=True
            )[0].clamp(0, 1)  # 1×4×S×S -> 4×R×R
        return image[:3], image[3:]

    def __getitem__(self, index: int) -> VideoSample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        video, source_frame, driver_frame, other, cross_frame = self.draw(index)
        source, _ = self.frame_image(video, source_frame)
        driver, driver_alpha = self.frame_image(video, driver_frame)
        cross_driver, _ = self.frame_image(other, cross_frame)
        landmarks = torch.from_numpy(np.array(self.arrays(video).landmarks[driver_frame])) * self.resolution  # 68×2 crop units -> pixels
        return VideoSample(
            source=source,
            driver=driver,
            driver_alpha=driver_alpha,
            cross_driver=cross_driver,
            cross_target=torch.zeros_like(source),
            cross_target_alpha=torch.zeros_like(driver_alpha),
            driver_landmarks=landmarks.float(),
            cross_target_landmarks=torch.zeros_like(landmarks).float(),
            cross_valid=torch.tensor(0.0),
        )

    def describe(self) -> dict[str, object]:
        """What the data is, for the run's config.json."""
        return {
            "source": "video",
            "root": str(self.root),
            "prepared_resolution": self.prepared_resolution,
            "resolution": self.resolution,
            "videos": len(self.videos),
            "people": len({v.person for v in self.videos}),
            "usable_frames": sum(video.usable.size for video in self.videos),
            "skipped_when_prepared": self.skipped,
            "samples_per_epoch": self.length,
            "seed": self.seed,
            "prepare_command": self.command,
            "pairs": "source and driver: two face frames of one video; cross driver: a frame of another video "
            "(another person when there is one); no cross target (cross_valid = 0)",
        }
