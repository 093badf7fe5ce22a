"""A refinement job's files and progress lines (DESIGN §4.3): what the server hands `megalive-train enroll` and reads back.

The server (torch-free) enrolls an avatar one-shot, then starts `megalive-train enroll` in a separate process:

    JOB.in.npz    frames      K×H×W×3 uint8     the aligned face crops the avatar was embedded from
                  landmarks   K×68×2 float32    their 68 landmarks in crop pixels (absent: unknown)
                  identity    C_id×S×S float32  the one-shot identity tensor (the fit starts there)
    stdout        one JSON object per line: {"step": n, "steps": N, "loss": x}, then {"done": true, ...}
    JOB.out.npz   identity    C_id×S×S float32  the refined tensor
                  summary     UTF-8 JSON bytes   steps, first and last loss, seconds, the objective

Every file is written to a temporary name and renamed, so a reader sees a whole file or none. Plain arrays, read
with allow_pickle=False. Standard library and numpy only.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class RefinementJobError(ValueError):
    """A job file that cannot be read or written; the message is one line."""


@dataclass(frozen=True, kw_only=True)
class RefinementInput:
    frames: np.ndarray  # K×H×W×3 uint8
    landmarks: np.ndarray | None  # K×68×2 float32 crop pixels
    identity: np.ndarray  # C_id×S×S float32

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[3] != 3 or self.frames.dtype != np.uint8 or not len(self.frames):
            raise RefinementJobError(f"frames must be K×H×W×3 uint8 with K ≥ 1, got {self.frames.shape} {self.frames.dtype}")
        if self.landmarks is not None and self.landmarks.shape != (len(self.frames), 68, 2):
            raise RefinementJobError(f"landmarks must be {len(self.frames)}×68×2, got {self.landmarks.shape}")
        if self.identity.ndim != 3 or self.identity.dtype != np.float32:
            raise RefinementJobError(f"identity must be C×S×S float32, got {self.identity.shape} {self.identity.dtype}")


@dataclass(frozen=True, kw_only=True)
class RefinementOutput:
    identity: np.ndarray  # C_id×S×S float32
    summary: dict[str, object]  # steps, first_loss, last_loss, seconds, objective


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except FileNotFoundError:
        raise RefinementJobError(f"refinement job file not found: {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise RefinementJobError(f"refinement job file {path} is unreadable: {error}") from None


def write_input(job: RefinementInput, path: Path) -> None:
    arrays = {"frames": job.frames, "identity": job.identity}
    if job.landmarks is not None:
        arrays["landmarks"] = job.landmarks.astype(np.float32)
    _write_atomically(path, arrays)


def read_input(path: Path) -> RefinementInput:
    arrays = _read_arrays(path)
    try:
        return RefinementInput(frames=arrays["frames"], landmarks=arrays.get("landmarks"), identity=arrays["identity"])
    except KeyError as error:
        raise RefinementJobError(f"{path}: no {error} array") from None


def write_output(output: RefinementOutput, path: Path) -> None:
    summary = np.frombuffer(json.dumps(output.summary).encode("utf-8"), dtype=np.uint8)
    _write_atomically(path, {"identity": output.identity.astype(np.float32), "summary": summary})


def read_output(path: Path) -> RefinementOutput:
    arrays = _read_arrays(path)
    try:
        summary = json.loads(arrays["summary"].tobytes().decode("utf-8"))
        identity = arrays["identity"]
    except (KeyError, ValueError, UnicodeDecodeError) as error:
        raise RefinementJobError(f"{path}: malformed refinement result ({error})") from None
    if identity.ndim != 3 or identity.dtype != np.float32 or not np.isfinite(identity).all():
        raise RefinementJobError(f"{path}: the refined identity is not a finite C×S×S float32 tensor")
    return RefinementOutput(identity=identity, summary=summary)


def progress_line(*, step: int, steps: int, loss: float) -> str:
    return json.dumps({"step": step, "steps": steps, "loss": round(loss, 6)})


def done_line(summary: dict[str, object]) -> str:
    return json.dumps({"done": True, **summary})


def parse_line(line: str) -> dict[str, object] | None:
    """A progress or done line as a dict; None for anything else (a warning a library printed)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and ("step" in value or value.get("done") is True) else None
