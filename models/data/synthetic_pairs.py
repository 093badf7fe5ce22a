"""Training samples of the MegaPortraits base model from SyntheticHeads, rendered on the fly.

A sample is what one training step of the base model needs per batch element (DESIGN.md §4.1, §5):

    identity A, clip c:   source = frame i,  driver = frame j          (self-reenactment; target = driver)
    identity B ≠ A, clip c' of B:  cross_driver = frame k              (another video's driver)
    cross_target = render(A, motion of cross_driver)                   (cross-reenactment ground truth)

Real video has no cross-reenactment ground truth; SyntheticHeads has it because identity and motion
are separate inputs of its renderer. Clips are smooth talking-head performances (``sample_clip``).

Open mouths are rare in the clips (jawOpen ≥ 0.3 in about one frame in six), and a closed-mouth source
driven to an open mouth rarer still. ``open_mouth_share`` draws that share of samples as exactly that
case: the source among its clip's closed-mouth frames, the driver and the cross driver among their
clips' open-mouth frames (this project's sampling, to show the teacher the jaw more often).

Every sample is a pure function of (seed, index): identities come from the seed, each identity's
clips from (seed, identity, clip), the choice of identities, clips and frames from (seed, index). So
shards drawn by a ``DistributedSampler`` are reproducible, any DataLoader worker renders the same
sample, and a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from contract.arkit import ARKIT_INDEX
from models.data.heads import HeadMotion, Identity, SyntheticHeads, sample_clip, sample_identities


class ReenactmentSample(NamedTuple):
    """One training sample (a DataLoader batches each field: 3×H×W -> B×3×H×W). Images in [0, 1]."""

    source: Tensor  # 3×H×W: identity A, clip c, frame i
    driver: Tensor  # 3×H×W: identity A, clip c, frame j (the self-reenactment target too)
    driver_alpha: Tensor  # 1×H×W: the driver's foreground mask
    cross_driver: Tensor  # 3×H×W: another identity in another clip
    cross_target: Tensor  # 3×H×W: identity A with the cross driver's motion
    cross_target_alpha: Tensor  # 1×H×W
    driver_landmarks: Tensor  # 68×2: the driver's iBUG landmarks in pixels (pixel i spans [i, i+1)), for the face loss
    cross_target_landmarks: Tensor  # 68×2: the cross target's


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from parts, the same in every process (unlike ``hash``)."""
    text = ":".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


OPEN_JAW = 0.3  # jawOpen at or above which a frame's mouth counts as open (about the clips' 83rd percentile)
CLOSED_JAW = 0.1  # and below which it counts as closed


def identity_pool(count: int, *, seed: int) -> Identity:
    """The ``count`` identities a run with this seed trains on (also read back by benchmarks of that run)."""
    return sample_identities(count, generator=torch.Generator().manual_seed(derived_seed(seed, "identities")))


@dataclass(frozen=True)
class SyntheticPairsConfig:
    resolution: int
    identities: int = 1000  # identity pool
    clips_per_identity: int = 4
    frames_per_clip: int = 64  # 2.6 s at 25 fps
    length: int = 100_000  # samples per epoch (each index is a different draw)
    seed: int = 0
    open_mouth_share: float = 0.0  # share of samples drawn as closed-mouth source, open-mouth drivers [0-1]

    def __post_init__(self) -> None:
        if not 0 <= self.open_mouth_share <= 1:
            raise ValueError(f"open_mouth_share must be in [0, 1], got {self.open_mouth_share}")
        if self.identities < 2:
            raise ValueError(f"synthetic pairs need at least 2 identities (cross drivers come from another one), got {self.identities}")
        if self.clips_per_identity < 1 or self.frames_per_clip < 2 or self.length < 1:
            raise ValueError("synthetic pairs need clips_per_identity ≥ 1, frames_per_clip ≥ 2 and length ≥ 1")


class SyntheticPairs(Dataset[ReenactmentSample]):
    """``dataset[index]`` renders one ReenactmentSample (four heads at once) on the CPU."""

    def __init__(self, *, config: SyntheticPairsConfig) -> None:
        self.config = config
        self.heads = SyntheticHeads(resolution=config.resolution)
        self.identities = identity_pool(config.identities, seed=config.seed)

    def __len__(self) -> int:
        return self.config.length

    def clip(self, identity: int, clip: int) -> HeadMotion:
        """The motion of one clip of one identity: frames_per_clip frames."""
        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, "clip", identity, clip))
        return sample_clip(self.config.frames_per_clip, generator=generator)

    def clip_jaw(self, identity: int, clip: int) -> Tensor:
        """jawOpen of each frame of one clip: frames_per_clip values in [0, 1]."""
        return self.clip(identity, clip).expression[:, ARKIT_INDEX["jawOpen"]]

    def draw(self, index: int) -> tuple[int, int, int, int, int, int, int]:
        """(A, c, i, j, B, c', k) of the sample at ``index``: identities, clips and frames."""
        config = self.config
        generator = torch.Generator().manual_seed(derived_seed(config.seed, "sample", index))

        def pick(count: int) -> int:
            return int(torch.randint(count, (1,), generator=generator))

        identity = pick(config.identities)
        clip = pick(config.clips_per_identity)
        source_frame, driver_frame = (int(f) for f in torch.randperm(config.frames_per_clip, generator=generator)[:2])
        other = pick(config.identities - 1)
        other += other >= identity  # any identity but A
        other_clip, cross_frame = pick(config.clips_per_identity), pick(config.frames_per_clip)
        # Only a share above 0 draws more numbers, so runs without it see exactly the samples they always did.
        if config.open_mouth_share > 0 and float(torch.rand(1, generator=generator)) < config.open_mouth_share:
            jaw = self.clip_jaw(identity, clip)
            closed, opened = (jaw < CLOSED_JAW).nonzero()[:, 0], (jaw >= OPEN_JAW).nonzero()[:, 0]
            if len(closed) and len(opened):  # a clip without both keeps its uniform draw
                source_frame, driver_frame = int(closed[pick(len(closed))]), int(opened[pick(len(opened))])
            cross_opened = (self.clip_jaw(other, other_clip) >= OPEN_JAW).nonzero()[:, 0]
            if len(cross_opened):
                cross_frame = int(cross_opened[pick(len(cross_opened))])
        return identity, clip, source_frame, driver_frame, other, other_clip, cross_frame

    def __getitem__(self, index: int) -> ReenactmentSample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        identity, clip, source_frame, driver_frame, other, other_clip, cross_frame = self.draw(index)
        motion = self.clip(identity, clip)
        cross_motion = self.clip(other, other_clip)[cross_frame]
        who = torch.tensor([identity, identity, other, identity])
        # Four heads in one render: source, driver, cross driver, cross target.
        motions = HeadMotion.cat([motion[source_frame], motion[driver_frame], cross_motion, cross_motion])
        renders = self.heads.render(self.identities[who], motions)
        rgb, alpha, landmarks = renders.rgb, renders.alpha, renders.landmarks  # 4×3×H×W, 4×1×H×W, 4×68×2
        return ReenactmentSample(
            source=rgb[0], driver=rgb[1], driver_alpha=alpha[1], cross_driver=rgb[2], cross_target=rgb[3], cross_target_alpha=alpha[3],
            driver_landmarks=landmarks[1], cross_target_landmarks=landmarks[3],
        )  # fmt: skip

    def describe(self) -> dict[str, object]:
        """What the data is, for the run's config.json."""
        config = self.config
        return {
            "source": "synthetic",
            "renderer": "SyntheticHeads",
            "resolution": config.resolution,
            "identities": config.identities,
            "clips_per_identity": config.clips_per_identity,
            "frames_per_clip": config.frames_per_clip,
            "samples_per_epoch": config.length,
            "seed": config.seed,
            "pairs": "source and driver from one clip of one identity; cross driver from another identity's clip; "
            "cross target = the source identity rendered with the cross driver's motion",
            "open_mouth_share": f"{config.open_mouth_share:g} of samples: source with jawOpen < {CLOSED_JAW}, driver and cross "
            f"driver with jawOpen ≥ {OPEN_JAW} (where their clips have such frames)",
        }
