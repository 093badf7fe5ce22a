"""Export an avatar network to ONNX (opset 20) with its JSON sidecar, checked against PyTorch.

The sidecar is the model card the runtime reads (server/engine.py): resolution, avatar names, the
driver kinds, the exact producing command and a hash of the training config. Both files are written
to temporary names and renamed into place, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from models.blocks import conv_multiply_accumulates

SIDECAR_FORMAT = "megalive-avatar-model"  # must match server/engine.py (models never imports server)
SIDECAR_FORMAT_VERSION = 1
OPSET = 20  # 5-D GridSample needs opset 20


@dataclass(frozen=True)
class ExportReport:
    model_path: Path
    sidecar_path: Path
    max_abs_error: float  # ONNX Runtime CPU versus PyTorch on random inputs, rgb and alpha together
    onnx_bytes: int


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a resolved config (sorted JSON)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def current_command() -> str:
    """The command line of this process, as a user would type it again."""
    program = Path(sys.argv[0]).name if sys.argv else "python"
    return shlex.join([program, *sys.argv[1:]])


def _atomic_target(path: Path) -> Path:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    os.chmod(temporary, 0o644)  # mkstemp makes it private; a model is ordinary shared data
    return Path(temporary)


def export_avatar_model(
    module: nn.Module,
    *,
    out_path: str | Path,
    resolution: tuple[int, int],
    avatar_names: Sequence[str],
    command: str,
    config: Mapping[str, Any],
    drivers: Sequence[str] = ("image",),
    thumbnails: np.ndarray | None = None,
    parity_batch: int = 2,
) -> ExportReport:
    """module(driver B×3×H×W, avatar B) -> (rgb B×3×H×W, alpha B×1×H×W); writes OUT.onnx + OUT.json."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    height, width = resolution
    generator = torch.Generator().manual_seed(0)
    driver = torch.rand(parity_batch, 3, height, width, generator=generator)
    avatar = torch.arange(parity_batch, dtype=torch.int64) % len(avatar_names)
    batch_axis = {0: "batch"}
    temporary = _atomic_target(out_path)
    try:
        torch.onnx.export(
            module,
            (driver, avatar),
            str(temporary),
            input_names=["driver", "avatar"],
            output_names=["rgb", "alpha"],
            dynamic_axes={"driver": batch_axis, "avatar": batch_axis, "rgb": batch_axis, "alpha": batch_axis},
            opset_version=OPSET,
            dynamo=False,
        )
        max_abs_error = _parity(module, temporary, driver, avatar)
        gflops_per_frame = 2 * conv_multiply_accumulates(module, driver[:1], avatar[:1]) / 1e9
        os.replace(temporary, out_path)
    finally:
        temporary.unlink(missing_ok=True)

    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "name": out_path.stem,
        "model_file": out_path.name,
        "resolution": [height, width],
        "avatars": list(avatar_names),
        "drivers": list(drivers),
        "inputs": {"driver": {"dtype": "float32", "shape": ["B", 3, height, width], "range": [0, 1]},
                   "avatar": {"dtype": "int64", "shape": ["B"]}},
        "outputs": {"rgb": {"dtype": "float32", "shape": ["B", 3, height, width], "range": [0, 1]},
                    "alpha": {"dtype": "float32", "shape": ["B", 1, height, width], "range": [0, 1]}},
        "opset": OPSET,
        "command": command,
        "config": dict(config),
        "config_hash": config_hash(config),
        "parity_max_abs_error": max_abs_error,
        "gflops_per_frame": gflops_per_frame,  # convolutions and linear layers, 2 FLOPs per multiply-accumulate
        "thumbnails": None,
    }
    if thumbnails is not None:
        thumbnails_path = out_path.with_suffix(".thumbs.npy")
        temporary = _atomic_target(thumbnails_path)
        with open(temporary, "wb") as handle:
            np.save(handle, np.ascontiguousarray(thumbnails, dtype=np.uint8), allow_pickle=False)
        os.replace(temporary, thumbnails_path)
        sidecar["thumbnails"] = thumbnails_path.name
    sidecar_path = out_path.with_suffix(".json")
    temporary = _atomic_target(sidecar_path)
    temporary.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, sidecar_path)
    return ExportReport(model_path=out_path, sidecar_path=sidecar_path, max_abs_error=max_abs_error, onnx_bytes=out_path.stat().st_size)


def _parity(module: nn.Module, onnx_path: Path, driver: torch.Tensor, avatar: torch.Tensor) -> float:
    import onnxruntime as ort

    with torch.no_grad():
        expected = [t.numpy() for t in module(driver, avatar)]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(["rgb", "alpha"], {"driver": driver.numpy(), "avatar": avatar.numpy()})
    return float(max(np.abs(a - e).max() for a, e in zip(actual, expected)))
