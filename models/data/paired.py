"""Paired SyntheticHeads data for cross-driving: a driver identity and an avatar doing the same motion.

`megalive-train synth` writes it; the student trainer reads it. Layout of a dataset folder:

    meta.json               format, resolution, counts, seed, avatar names, the producing command
    avatars.npz             Identity arrays of the A avatars (np.savez: plain arrays, no pickle)
    drivers.npz             Identity arrays of the D driver identities (never avatars)
    motions.npz             HeadMotion arrays of the M motions
    pairs.npz               driver_index [M] int32, avatar_index [M] int32
    driver_rgba.npy         M×H×W×4 uint8   driver d(m) doing motion m (alpha = foreground mask)
    target_rgba.npy         M×H×W×4 uint8   avatar a(m) doing motion m — the ground truth
    driver_landmarks.npy    M×68×2 float32  pixel (x, y), iBUG order
    target_landmarks.npy    M×68×2 float32
    neutral_rgba.npy        A×H×W×4 uint8   each avatar with the neutral motion (thumbnails, baseline)
    contact_sheet.png       avatars × expressions, for a person to look at

The folder is written under a temporary name (``.OUT.partial-XXXX`` beside it) and renamed when complete,
so a crash never leaves a half-written dataset under the final name. A failure removes the partial folder;
a kill cannot, so the next synth of the same OUT removes what a killed one left. A running synth holds an
advisory lock on its partial folder, which tells a killed run's folder from a live one's.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so every partial folder counts as a killed run's
    fcntl = None  # type: ignore[assignment]

from models.config_checks import check_ranges
from models.data.heads import (
    HeadMotion,
    Identity,
    SyntheticHeads,
    contact_sheet,
    neutral_motion,
    sample_identities,
    sample_motions,
)

DATASET_FORMAT = "megalive-paired-heads"
DATASET_VERSION = 1
AVATAR_NAMES = ("Ada", "Basil", "Cleo", "Dario", "Esme", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kai", "Lena")

# Expressions of the contact sheet: (label, ARKit controls).
SHEET_EXPRESSIONS: tuple[tuple[str, dict[str, float]], ...] = (
    ("neutral", {}),
    ("jawOpen", {"jawOpen": 1.0}),
    ("smile", {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}),
    ("blink", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}),
    ("browInnerUp", {"browInnerUp": 1.0, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8}),
    ("pucker+look", {"mouthPucker": 1.0, "eyeLookOutRight": 0.8, "eyeLookInLeft": 0.8}),
)


class DatasetError(Exception):
    """A dataset folder that is missing, incomplete or of another format; one line for the user."""


@dataclass(frozen=True)
class SynthConfig:
    resolution: int = 256
    num_avatars: int = 8
    num_driver_identities: int = 200
    num_motions: int = 8_000
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        check_ranges(self, (
            ("resolution", not 32 <= self.resolution <= 1024, "must be in [32, 1024]"),
            ("num_avatars", not 1 <= self.num_avatars <= 64, "must be in [1, 64]"),
            ("num_driver_identities", not 1 <= self.num_driver_identities <= 100_000, "must be in [1, 100000]"),
            ("num_motions", not self.num_motions >= 1, "must be at least 1"),
            ("batch_size", not self.batch_size >= 1, "must be at least 1"),
        ))  # fmt: skip


def avatar_names(count: int) -> tuple[str, ...]:
    return tuple(AVATAR_NAMES[i] if i < len(AVATAR_NAMES) else f"Avatar{i}" for i in range(count))


def _to_rgba8(rgb: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    """B×3×H×W and B×1×H×W floats in [0,1] -> B×H×W×4 uint8."""
    rgba = torch.cat([rgb, alpha], dim=1).clamp(0, 1).mul(255).add(0.5).to(torch.uint8)  # B×4×H×W
    return rgba.permute(0, 2, 3, 1).contiguous().numpy()  # B×4×H×W -> B×H×W×4


def synth_identities(config: SynthConfig) -> tuple[Identity, Identity]:
    """The avatars and the driver identities, from separate seeded streams so they never coincide."""
    avatars = sample_identities(config.num_avatars, generator=torch.Generator().manual_seed(config.seed * 1000 + 1))
    drivers = sample_identities(config.num_driver_identities, generator=torch.Generator().manual_seed(config.seed * 1000 + 2))
    return avatars, drivers


def write_contact_sheet(heads: SyntheticHeads, identities: Identity, path: Path) -> None:
    """Identities (rows) × SHEET_EXPRESSIONS (columns) as a PNG."""
    rows = []
    for index in range(len(identities)):
        identity = identities[index]
        motion = HeadMotion.cat([neutral_motion(1).with_controls(controls) for _, controls in SHEET_EXPRESSIONS])
        repeated = Identity.cat([identity] * len(SHEET_EXPRESSIONS))
        rows.append(heads.render(repeated, motion).rgb)
    sheet = contact_sheet(torch.cat(rows), columns=len(SHEET_EXPRESSIONS))  # 3×H'×W'
    save_png(sheet, path)


def save_png(image: torch.Tensor, path: Path) -> None:
    """3×H×W float in [0,1] -> PNG, written under a temporary name then renamed."""
    save_image(image, path, image_format="PNG")


def save_image(image: torch.Tensor, path: Path, *, image_format: str, quality: int = 90) -> None:
    """3×H×W float in [0,1] -> a PNG or JPEG (``quality``) file, written under a temporary name then renamed."""
    pixels = image.clamp(0, 1).mul(255).add(0.5).to(torch.uint8).permute(1, 2, 0).numpy()  # 3×H×W -> H×W×3
    temporary = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels).save(temporary, format=image_format, **({"quality": quality} if image_format == "JPEG" else {}))
    temporary.replace(path)


def _partial_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.partial-"


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[bool]:
    """Try to hold an exclusive advisory lock on folder while inside; yields False when another process holds it.
    The lock goes with the process: a killed synth's partial folder is free to take, a running one's is not."""
    if fcntl is None:
        yield True
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def remove_stale_partials(out_dir: Path) -> tuple[Path, ...]:
    """Remove the partial folders that killed synths of out_dir left beside it; returns them. DatasetError when a
    synth of the same out_dir is running now."""
    out_dir = Path(out_dir)
    removed = []
    for folder in sorted(out_dir.parent.glob(glob.escape(_partial_prefix(out_dir)) + "*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            with _folder_lock(folder) as free:
                if not free:
                    raise DatasetError(
                        f"another synth is writing {out_dir} now ({folder.name} is in use); wait for it or choose another folder"
                    )
                shutil.rmtree(folder)
        except FileNotFoundError:
            continue  # gone meanwhile: a synth that just finished renamed it
        except OSError as error:
            raise DatasetError(f"cannot remove {folder}, left by an interrupted synth: {error}") from None
        removed.append(folder)
    return tuple(removed)


def write_paired_dataset(out_dir: Path, config: SynthConfig, *, command: str, progress: bool = True) -> Path:
    """Render and write a paired dataset to out_dir (which must not exist yet); first removes what killed synths of
    out_dir left (remove_stale_partials)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DatasetError(f"{out_dir} exists already; choose a new folder (nothing was overwritten)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=_partial_prefix(out_dir), dir=out_dir.parent))
    try:
        with _folder_lock(staging):  # held until renamed or removed, so a concurrent synth leaves this folder alone
            staging.chmod(0o755)  # mkdtemp makes it private; a dataset is ordinary data
            _write_into(staging, config, command=command, progress=progress)
            staging.rename(out_dir)
    except BaseException:  # KeyboardInterrupt and SystemExit (the CLI's SIGTERM) too: no partial folder left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_into(folder: Path, config: SynthConfig, *, command: str, progress: bool) -> None:
    heads = SyntheticHeads(resolution=config.resolution)
    avatars, drivers = synth_identities(config)
    generator = torch.Generator().manual_seed(config.seed * 1000 + 3)
    motions = sample_motions(config.num_motions, generator=generator)
    driver_index = torch.randint(0, config.num_driver_identities, (config.num_motions,), generator=generator)
    avatar_index = torch.arange(config.num_motions) % config.num_avatars  # balanced over avatars
    avatar_index = avatar_index[torch.randperm(config.num_motions, generator=generator)]

    np.savez(folder / "avatars.npz", **avatars.to_arrays())
    np.savez(folder / "drivers.npz", **drivers.to_arrays())
    np.savez(folder / "motions.npz", **motions.to_arrays())
    np.savez(folder / "pairs.npz", driver_index=driver_index.numpy().astype(np.int32), avatar_index=avatar_index.numpy().astype(np.int32))

    count, size = config.num_motions, config.resolution
    open_array = np.lib.format.open_memmap
    driver_rgba = open_array(folder / "driver_rgba.npy", mode="w+", dtype=np.uint8, shape=(count, size, size, 4))
    target_rgba = open_array(folder / "target_rgba.npy", mode="w+", dtype=np.uint8, shape=(count, size, size, 4))
    driver_landmarks = open_array(folder / "driver_landmarks.npy", mode="w+", dtype=np.float32, shape=(count, 68, 2))
    target_landmarks = open_array(folder / "target_landmarks.npy", mode="w+", dtype=np.float32, shape=(count, 68, 2))
    with torch.inference_mode(), tqdm(total=count, desc="rendering pairs", unit="pair", disable=not progress) as bar:
        for start in range(0, count, config.batch_size):
            batch = slice(start, min(start + config.batch_size, count))
            motion = motions[batch]
            driver = heads.render(drivers[driver_index[batch]], motion)
            target = heads.render(avatars[avatar_index[batch]], motion)
            driver_rgba[batch] = _to_rgba8(driver.rgb, driver.alpha)
            target_rgba[batch] = _to_rgba8(target.rgb, target.alpha)
            driver_landmarks[batch] = driver.landmarks.numpy()
            target_landmarks[batch] = target.landmarks.numpy()
            bar.update(batch.stop - batch.start)
        neutral = heads.render(avatars, neutral_motion(config.num_avatars))
    for array in (driver_rgba, target_rgba, driver_landmarks, target_landmarks):
        array.flush()
    np.save(folder / "neutral_rgba.npy", _to_rgba8(neutral.rgb, neutral.alpha), allow_pickle=False)
    write_contact_sheet(heads, avatars, folder / "contact_sheet.png")
    meta = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "resolution": size,
        "num_avatars": config.num_avatars,
        "num_driver_identities": config.num_driver_identities,
        "num_pairs": count,
        "seed": config.seed,
        "avatar_names": list(avatar_names(config.num_avatars)),
        "command": command,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class DatasetMeta:
    root: Path
    resolution: int
    num_avatars: int
    num_pairs: int
    avatar_names: tuple[str, ...]
    seed: int
    command: str


def read_format_meta(root: Path, *, data_format: str, version: int, what: str, made_by: str) -> dict:
    """A data folder's meta.json, checked for its format and version; DatasetError (one line) otherwise.

    what: the folder's kind in messages ("dataset folder"); made_by: the command that makes one."""
    meta_path = root / "meta.json"
    if not root.is_dir():
        raise DatasetError(f"{what} not found: {root}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{root} is not a {what}: no meta.json (make one with `{made_by}`)") from None
    except (OSError, ValueError) as error:
        raise DatasetError(f"{meta_path} is unreadable: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != data_format or meta.get("version") != version:
        raise DatasetError(f"{root} is not a {data_format} v{version} {what} (made by `{made_by}`)")
    return meta


def read_meta(root: Path) -> DatasetMeta:
    root = Path(root)
    meta_path = root / "meta.json"
    meta = read_format_meta(
        root, data_format=DATASET_FORMAT, version=DATASET_VERSION, what="dataset folder", made_by="megalive-train synth"
    )
    try:
        return DatasetMeta(
            root=root,
            resolution=int(meta["resolution"]),
            num_avatars=int(meta["num_avatars"]),
            num_pairs=int(meta["num_pairs"]),
            avatar_names=tuple(meta["avatar_names"]),
            seed=int(meta["seed"]),
            command=str(meta.get("command", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{meta_path}: missing or malformed field ({error})") from None


def load_checked_array(path: Path, *, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A memory-mapped .npy of exactly this shape and dtype; DatasetError (one line) otherwise."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing (make the folder again)") from None
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path} is corrupt or truncated: {error}") from None
    if array.shape != shape or array.dtype != dtype:
        raise DatasetError(f"{path} has shape {array.shape} {array.dtype}, expected {shape} {np.dtype(dtype)}")
    return array


def load_identities(path: Path) -> Identity:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return Identity.from_arrays({name: arrays[name] for name in arrays.files})
    except (OSError, ValueError, KeyError) as error:
        raise DatasetError(f"{path} is missing or corrupt: {error}") from None


class HeadPair(NamedTuple):
    """One pair of PairedHeads."""

    driver: torch.Tensor  # 3×H×W in [0, 1]
    target_rgb: torch.Tensor  # 3×H×W
    target_alpha: torch.Tensor  # 1×H×W
    avatar: int
    target_landmarks: torch.Tensor  # 68×2: the target's landmarks in pixels (pixel i spans [i, i+1))


class PairedHeads(Dataset):
    """Items: HeadPair (driver rgb, target rgb and alpha, the avatar index, the target's landmarks)."""

    def __init__(self, *, root: Path) -> None:
        self.meta = read_meta(root)
        count, size = self.meta.num_pairs, self.meta.resolution
        self.driver_rgba = load_checked_array(self.meta.root / "driver_rgba.npy", shape=(count, size, size, 4), dtype=np.uint8)
        self.target_rgba = load_checked_array(self.meta.root / "target_rgba.npy", shape=(count, size, size, 4), dtype=np.uint8)
        self.neutral_rgba = load_checked_array(
            self.meta.root / "neutral_rgba.npy", shape=(self.meta.num_avatars, size, size, 4), dtype=np.uint8
        )
        try:
            with np.load(self.meta.root / "pairs.npz", allow_pickle=False) as pairs:
                self.avatar_index = pairs["avatar_index"].astype(np.int64)
        except (OSError, ValueError, KeyError) as error:
            raise DatasetError(f"{self.meta.root / 'pairs.npz'} is missing or corrupt: {error}") from None
        if self.avatar_index.shape != (count,) or self.avatar_index.min() < 0 or self.avatar_index.max() >= self.meta.num_avatars:
            raise DatasetError(f"{self.meta.root / 'pairs.npz'}: avatar indices do not fit {self.meta.num_avatars} avatars")
        self.target_landmarks = load_checked_array(self.meta.root / "target_landmarks.npy", shape=(count, 68, 2), dtype=np.float32)

    def __len__(self) -> int:
        return self.meta.num_pairs

    def __getitem__(self, index: int) -> HeadPair:
        driver = torch.from_numpy(np.array(self.driver_rgba[index, :, :, :3])).permute(2, 0, 1).float().div(255)  # H×W×3 -> 3×H×W
        target = torch.from_numpy(np.array(self.target_rgba[index])).permute(2, 0, 1).float().div(255)  # H×W×4 -> 4×H×W
        landmarks = torch.from_numpy(np.array(self.target_landmarks[index]))  # 68×2
        return HeadPair(driver, target[:3], target[3:], int(self.avatar_index[index]), landmarks)
