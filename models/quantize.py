"""int8 avatar models: ONNX Runtime's static quantisation of an exported model's main graph.

`megalive-train quantize` (models/commands/evaluate.py) reads an exported model (OUT.onnx and its sidecar), quantises
the convolutions of its main graph to int8 (QDQ format: per-channel int8 weights, uint8 activations whose ranges are
calibrated on driver frames of a `megalive-train synth` folder) and writes the whole model into another folder: the
int8 main graph, the sidecar with the new graph's digest, ``"precision": "int8"`` and this command appended to its
command line, and every other file of the model (thumbnails, capture graphs, embedder, avatar bank) copied unchanged.
The result is served, benchmarked and evaluated like any model; the int8 graph's largest difference from the fp32 one
on the calibration frames is reported (not a parity check: int8 changes the pictures, the benchmark says by how much).

On the CPU the int8 convolutions pay where the fp32 ones are the cost (README: "512 px on two CPU cores"); normalisation
and resampling stay in float.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

from contract.avatar_bank import read_bank
from contract.model_card import ModelCard, ModelCardError, file_sha256, read_model_card, sidecar_path

INT8 = "int8"
QUANTISED_OPERATORS = ("Conv",)


class QuantizeError(ValueError):
    """A model or calibration folder that cannot be quantised; the message is one line."""


@dataclass(frozen=True)
class QuantizeReport:
    model_path: Path
    calibration_frames: int
    max_abs_difference: float  # int8 against fp32 rgb on the calibration frames
    mean_abs_difference: float
    quantised_convolutions: int
    float_convolutions: int
    fp32_bytes: int
    int8_bytes: int


def calibration_frames(synth_folder: Path, *, count: int, resolution: tuple[int, int]) -> np.ndarray:
    """``count`` driver frames of a `megalive-train synth` folder, spread over it, as count×3×H×W float32 in [0, 1] at
    the model's resolution. QuantizeError when the folder has no drivers."""
    path = synth_folder / "driver_rgba.npy"
    if not path.is_file():
        raise QuantizeError(f"--data {synth_folder}: no driver_rgba.npy (a `megalive-train synth` folder has one)")
    try:
        drivers = np.load(path, mmap_mode="r")  # N×S×S×4 uint8
    except (OSError, ValueError) as error:
        raise QuantizeError(f"{path} is unreadable: {error}") from None
    if drivers.ndim != 4 or drivers.shape[3] != 4 or drivers.dtype != np.uint8 or len(drivers) == 0:
        raise QuantizeError(f"{path}: expected N×S×S×4 uint8 driver frames, got {drivers.dtype} {drivers.shape}")
    if count < 1:
        raise QuantizeError("--calibration must be at least 1")
    picks = np.linspace(0, len(drivers) - 1, num=min(count, len(drivers))).round().astype(int)
    frames = np.ascontiguousarray(drivers[picks, :, :, :3]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # N×3×S×S
    if frames.shape[2:] != resolution:
        import torch
        import torch.nn.functional as F

        frames = F.interpolate(torch.from_numpy(frames), size=resolution, mode="bilinear", antialias=True).clamp(0, 1).numpy()
    return frames


def _feeds(card: ModelCard, frames: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One feed per frame, the avatars taken in turn (a v2 model: their identity tensors from its bank)."""
    if card.enrollment is None:
        return [{"driver": frame[None], "avatar": np.array([index % card.num_avatars], np.int64)} for index, frame in enumerate(frames)]
    identity = read_bank(card.enrollment.bank_path).identity  # N×…
    return [{"driver": frame[None], "identity": identity[index % len(identity)][None]} for index, frame in enumerate(frames)]


class _Frames(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_avatar_model(*, model_path: Path, out_dir: Path, frames: np.ndarray, command: str, float_tail: int = 4) -> QuantizeReport:
    """Write ``out_dir``/<model file>: the int8 main graph, its sidecar and the model's other files (see the module
    docstring). The last ``float_tail`` convolutions (those nearest the picture) stay float: int8 activations there band
    smooth gradients into visible contours (the 512 px student's background and skin, all 40 convolutions quantised).
    The graph is written under a temporary name and renamed, the sidecar last. QuantizeError (one line) for a model
    that is not an fp32 picture-driven model, or an ``out_dir`` that is the model's own folder."""
    try:
        card = read_model_card(model_path)
    except ModelCardError as error:
        raise QuantizeError(str(error)) from None
    sidecar = json.loads(sidecar_path(model_path).read_text(encoding="utf-8"))
    if sidecar.get("precision", "fp32") != "fp32":
        raise QuantizeError(f"{model_path} is {sidecar['precision']}: quantise its fp32 export")
    if card.teacher is not None or card.landmark_input is not None:
        raise QuantizeError(f"{model_path} is a {card.family} model: int8 is offered for the picture-driven students")
    if out_dir.resolve() == model_path.parent.resolve():
        raise QuantizeError(f"--out {out_dir} is the model's own folder: name another")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / model_path.name
    stem, rewritten = model_path.name.removesuffix(".onnx"), (model_path.name, sidecar_path(model_path).name)
    for sibling in sorted(model_path.parent.iterdir()):  # thumbnails, capture graphs, embedder, bank: unchanged
        if sibling.is_file() and sibling.name.startswith(f"{stem}.") and sibling.name not in rewritten:
            shutil.copy2(sibling, out_dir / sibling.name)

    feeds = _feeds(card, frames)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".quantize-") as scratch:
        prepared, quantised = Path(scratch) / "prepared.onnx", Path(scratch) / "int8.onnx"
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        convolutions = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type in QUANTISED_OPERATORS]
        kept_float = convolutions[len(convolutions) - min(float_tail, len(convolutions)) :]  # graph order: the last ones
        quantize_static(
            str(prepared),
            str(quantised),
            _Frames(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTISED_OPERATORS),
            nodes_to_exclude=kept_float,
        )
        fp32 = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        int8 = ort.InferenceSession(str(quantised), providers=["CPUExecutionProvider"])
        differences = np.concatenate(
            [np.abs(fp32.run(["rgb"], feed)[0] - int8.run(["rgb"], feed)[0]).ravel() for feed in feeds]
        )  # fmt: skip
        temporary = out_path.with_name(f".{out_path.name}.tmp")
        shutil.copyfile(quantised, temporary)
        os.replace(temporary, out_path)

    sidecar.update(
        model_sha256=file_sha256(out_path),
        precision=INT8,
        command=f"{sidecar['command']} && {command}" if sidecar.get("command") else command,
        quantization={
            "by": f"onnxruntime {ort.__version__} quantize_static",
            "format": "QDQ",
            "operators": list(QUANTISED_OPERATORS),
            "kept_float": kept_float,
            "weights": "int8, per channel",
            "activations": "uint8, calibrated (min-max)",
            "calibration_frames": len(frames),
            "max_abs_difference_rgb": float(differences.max()),
            "mean_abs_difference_rgb": float(differences.mean()),
        },
    )
    card_temporary = out_dir / f".{sidecar_path(out_path).name}.tmp"
    card_temporary.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    os.replace(card_temporary, sidecar_path(out_path))
    read_model_card(out_path)  # the card names the graph it sits beside
    return QuantizeReport(
        model_path=out_path,
        calibration_frames=len(frames),
        max_abs_difference=float(differences.max()),
        mean_abs_difference=float(differences.mean()),
        quantised_convolutions=len(convolutions) - len(kept_float),
        float_convolutions=len(kept_float),
        fp32_bytes=model_path.stat().st_size,
        int8_bytes=out_path.stat().st_size,
    )
