"""Export an avatar network to ONNX (opset 20) with its JSON sidecar, checked against PyTorch.

The sidecar is the model card the runtime reads (server/engine.py): resolution, avatar names, the
driver kinds, the exact producing command, a hash of the training config and the SHA-256 of every graph
it names. Every file is written to a temporary name beside its final one; only when all are written are
they renamed into place, the sidecar last. A crash never leaves a half-written file under a final name,
and one between the renames leaves new graphs beside the old sidecar, whose digests the server checks:
it refuses that pair instead of serving a model with another model's card.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# The sidecar's schema and the digest it records are contract's: the server and the evaluation read them back.
from contract.avatar_bank import AvatarBank, AvatarRecord, bank_path, save_bank
from contract.model_card import PRECISIONS, SIDECAR_FORMAT, SIDECAR_FORMAT_VERSION, SIDECAR_FORMAT_VERSION_IDENTITY, file_sha256
from models.blocks import conv_multiply_accumulates

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


@dataclass(frozen=True)
class ExtraDriver:
    """A further driver kind of the same avatars: its own graph, module(signal, avatar) -> (rgb, alpha)."""

    kind: str  # "arkit" | "landmarks"
    module: nn.Module
    input_name: str  # "curves" | "landmarks"
    input_shape: tuple[int, ...]  # per sample, e.g. (61,) or (68, 2)
    config: Mapping[str, Any]  # recorded in the sidecar (the puppet's settings, the landmark solver's training config)
    outputs: tuple[str, ...] = ("rgb", "alpha")  # ("landmarks",): a landmark-driven model's signal -> points graph


@dataclass(frozen=True)
class EnrollmentExport:
    """Contract v2: the graphs take identity tensors (B×C_id×S×S) instead of an avatar index, and beside them go the
    shipped avatars' bank and the identity embedder's graph (frames B×K×3×H×W -> identity), which enrolls new ones."""

    embedder: nn.Module
    bank: AvatarBank  # the shipped avatars: identity tensors, thumbnails, records
    student: nn.Module | None = None  # the Student: its weights go beside the graphs for few-shot refinement (torch)


def embedder_path(model_path: Path) -> Path:
    """student.onnx -> student.embedder.onnx."""
    return model_path.with_name(f"{model_path.stem}.embedder.onnx")


def weights_path(model_path: Path) -> Path:
    """student.onnx -> student.weights.npz: the student's PyTorch weights, which few-shot refinement fits through."""
    return model_path.with_name(f"{model_path.stem}.weights.npz")


def extra_driver_path(model_path: Path, kind: str) -> Path:
    """student.onnx -> student.arkit.onnx: the graphs of one model sit side by side."""
    return model_path.with_name(f"{model_path.stem}.{kind}.onnx")


def _flush_to_disk(path: Path) -> None:
    with open(path, "r+b") as handle:  # writable: Windows refuses to fsync a read-only handle
        os.fsync(handle.fileno())


AVATAR_OUTPUTS = ("rgb", "alpha")


def _to_half_precision(path: Path) -> None:
    """Rewrite a graph with fp16 weights and arithmetic but fp32 inputs and outputs (casts at its edges), so that the
    card's contract and the engine stay as they are: the GPU providers' fast path. ONNX Runtime's own converter."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def _export_graph(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    out_path: Path,
    *,
    outputs: tuple[str, ...] = AVATAR_OUTPUTS,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    precision: str = "fp32",
) -> float:
    """Write one graph (inputs..., outputs; the batch axis of each dynamic unless ``dynamic_axes`` says more) to
    out_path, in ``precision``; returns its parity error (an fp16 graph's against the fp32 module)."""
    batch_axis = {0: "batch"}
    torch.onnx.export(
        module,
        tuple(inputs.values()),
        str(out_path),
        input_names=list(inputs),
        output_names=list(outputs),
        dynamic_axes={name: batch_axis for name in [*inputs, *outputs]} | (dynamic_axes or {}),
        opset_version=OPSET,
        dynamo=False,
    )
    if precision == "fp16":
        _to_half_precision(out_path)
    return _parity(module, out_path, inputs, outputs=outputs)


def export_avatar_model(
    module: nn.Module,
    *,
    out_path: str | Path,
    resolution: tuple[int, int],
    avatar_names: Sequence[str],
    command: str,
    config: Mapping[str, Any],
    extra_drivers: Sequence[ExtraDriver] = (),
    thumbnails: np.ndarray | None = None,
    parity_batch: int = 2,
    enrollment: EnrollmentExport | None = None,
    driver_input: Mapping[str, Any] | None = None,
    teacher: Mapping[str, Any] | None = None,
    precision: str = "fp32",
) -> ExportReport:
    """module(driver B×3×H×W, avatar B) -> (rgb B×3×H×W, alpha B×1×H×W); writes OUT.onnx + OUT.json,
    and OUT.<kind>.onnx for every extra driver kind. With ``enrollment`` (contract v2) every module takes the identity
    tensors B×C_id×S×S in place of the avatar index, and OUT.embedder.onnx and OUT.avatars.npz are written too.
    ``driver_input`` (the sidecar's entry of that name) marks a landmark-driven model: its driver is a landmark image
    (contract/model_card.py LandmarkImageInput) and "landmarks" is among its drivers without a graph of its own.
    ``teacher`` (the sidecar's entry of that name, with ``enrollment``) marks a MegaPortraits teacher served directly
    (contract/model_card.py TeacherModel; models/export_teacher.py). ``precision`` "fp16": every graph computes in fp16
    with fp32 inputs and outputs (the sidecar's ``precision``; parity errors are then fp16's, about 1e-2)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    out_path = Path(out_path)
    kinds = [extra.kind for extra in extra_drivers]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"extra driver kinds {kinds} repeat; one graph per kind")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Final path -> its temporary beside it. Insertion order is rename order: graphs, thumbnails, sidecar last.
    staged: dict[Path, Path] = {}

    def stage(final: Path) -> Path:
        staged[final] = _atomic_target(final)
        return staged[final]

    try:
        max_abs_error = _write_staged(
            module,
            out_path=out_path,
            resolution=resolution,
            avatar_names=avatar_names,
            command=command,
            config=config,
            extra_drivers=extra_drivers,
            thumbnails=thumbnails,
            parity_batch=parity_batch,
            stage=stage,
            enrollment=enrollment,
            driver_input=driver_input,
            teacher=teacher,
            precision=precision,
        )
        for temporary in staged.values():
            _flush_to_disk(temporary)  # a power cut after a rename must find the bytes, not an empty file
        # Nothing is renamed until everything is written and checked. The sidecar goes last: until it lands, the old
        # sidecar's digests make the server refuse the new graphs, so a kill between renames never serves a mixed pair.
        for final, temporary in staged.items():
            os.replace(temporary, final)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)  # renamed ones are gone already; the rest are leftovers of a failure
    return ExportReport(
        model_path=out_path, sidecar_path=out_path.with_suffix(".json"), max_abs_error=max_abs_error, onnx_bytes=out_path.stat().st_size
    )


def _write_staged(
    module: nn.Module,
    *,
    out_path: Path,
    resolution: tuple[int, int],
    avatar_names: Sequence[str],
    command: str,
    config: Mapping[str, Any],
    extra_drivers: Sequence[ExtraDriver],
    thumbnails: np.ndarray | None,
    parity_batch: int,
    stage: Callable[[Path], Path],
    enrollment: EnrollmentExport | None,
    driver_input: Mapping[str, Any] | None,
    teacher: Mapping[str, Any] | None = None,
    precision: str = "fp32",
) -> float:
    """Write every file of the export to the temporary that stage(final path) gives (renames are the caller's);
    returns the largest parity error of its graphs."""
    module = module.eval()
    height, width = resolution
    generator = torch.Generator().manual_seed(0)
    driver = torch.rand(parity_batch, 3, height, width, generator=generator)
    rows = torch.arange(parity_batch, dtype=torch.int64) % len(avatar_names)
    if enrollment is None:  # contract v1: an index into the avatars the graph holds
        who: dict[str, torch.Tensor] = {"avatar": rows}
        who_entry: dict[str, Any] = {"avatar": {"dtype": "int64", "shape": ["B"]}}
    else:  # contract v2: the avatars' identity tensors themselves (the shipped ones, for the parity check)
        who = {"identity": torch.from_numpy(enrollment.bank.identity)[rows]}
        who_entry = {"identity": {"dtype": "float32", "shape": ["B", *enrollment.bank.identity_shape]}}
    model_temporary = stage(out_path)
    max_abs_error = _export_graph(module, {"driver": driver, **who}, model_temporary, precision=precision)
    first = {name: tensor[:1] for name, tensor in who.items()}
    gflops_per_frame = 2 * conv_multiply_accumulates(module, driver[:1], *first.values()) / 1e9
    adapters: dict[str, Any] = {}
    for extra in extra_drivers:
        signal = torch.rand(parity_batch, *extra.input_shape, generator=generator)
        path = extra_driver_path(out_path, extra.kind)
        temporary = stage(path)
        error = _export_graph(extra.module.eval(), {extra.input_name: signal, **who}, temporary, outputs=extra.outputs, precision=precision)
        max_abs_error = max(max_abs_error, error)
        adapters[extra.kind] = {
            "model_file": path.name,
            "model_sha256": file_sha256(temporary),  # renaming keeps the bytes: this is the final file's digest
            "input": {"name": extra.input_name, "dtype": "float32", "shape": ["B", *extra.input_shape]},
            "outputs": list(extra.outputs),
            "parity_max_abs_error": error,
            "gflops_per_frame": 2 * conv_multiply_accumulates(extra.module, signal[:1], *first.values()) / 1e9,
            "config": dict(extra.config),
        }

    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION if enrollment is None else SIDECAR_FORMAT_VERSION_IDENTITY,
        "name": out_path.stem,
        "model_file": out_path.name,
        "model_sha256": file_sha256(model_temporary),
        "resolution": [height, width],
        "avatars": list(avatar_names),
        "drivers": ["image", *(["landmarks"] if driver_input is not None else []), *adapters],
        "adapters": adapters,  # driver kind -> its graph beside this one (same avatars, same outputs)
        "inputs": {
            "driver": {"dtype": "float32", "shape": ["B", 3, height, width], "range": [0, 1]},
            **who_entry,
        },
        "outputs": {
            "rgb": {"dtype": "float32", "shape": ["B", 3, height, width], "range": [0, 1]},
            "alpha": {"dtype": "float32", "shape": ["B", 1, height, width], "range": [0, 1]},
        },
        "opset": OPSET,
        "precision": precision,  # of the arithmetic; inputs and outputs are float32 either way
        "command": command,
        "config": dict(config),
        "config_hash": config_hash(config),
        "parity_max_abs_error": max_abs_error,
        "gflops_per_frame": gflops_per_frame,  # convolutions and linear layers, 2 FLOPs per multiply-accumulate
        "thumbnails": None,
    }
    if driver_input is not None:
        sidecar["driver_input"] = dict(driver_input)
    if teacher is not None:
        sidecar["teacher"] = dict(teacher)
    if thumbnails is not None:
        thumbnails_path = out_path.with_suffix(".thumbs.npy")
        with open(stage(thumbnails_path), "wb") as handle:
            np.save(handle, np.ascontiguousarray(thumbnails, dtype=np.uint8), allow_pickle=False)
        sidecar["thumbnails"] = thumbnails_path.name
    if enrollment is not None:
        error = _write_enrollment(enrollment, out_path=out_path, resolution=resolution, sidecar=sidecar, stage=stage, precision=precision)
        max_abs_error = max(max_abs_error, error)
    stage(out_path.with_suffix(".json")).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return max_abs_error


def _write_enrollment(
    enrollment: EnrollmentExport,
    *,
    out_path: Path,
    resolution: tuple[int, int],
    sidecar: dict[str, Any],
    stage: Callable[[Path], Path],
    precision: str = "fp32",
) -> float:
    """Contract v2's embedder graph and shipped bank, staged, and their sidecar entries; returns the embedder's parity
    error (checked at two frame counts: K is dynamic in the graph)."""
    height, width = resolution
    generator = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 3, 3, height, width, generator=generator)  # B×K×3×H×W
    path = embedder_path(out_path)
    temporary = stage(path)
    embedder = enrollment.embedder.eval()
    dynamic = {"frames": {0: "batch", 1: "shots"}}
    error = _export_graph(embedder, {"frames": frames}, temporary, outputs=("identity",), dynamic_axes=dynamic, precision=precision)
    error = max(error, _parity(embedder, temporary, {"frames": frames[:1, :1]}, outputs=("identity",)))  # one frame
    bank_file = bank_path(out_path)
    bank_temporary = stage(bank_file)
    with open(bank_temporary, "wb") as handle:
        save_bank(enrollment.bank, handle)
    sidecar["identity"] = {"shape": list(enrollment.bank.identity_shape)}
    sidecar["embedder"] = {
        "model_file": path.name,
        "model_sha256": file_sha256(temporary),
        "input": {"name": "frames", "dtype": "float32", "shape": ["B", "K", 3, height, width], "range": [0, 1]},
        "output": {"name": "identity", "dtype": "float32", "shape": ["B", *enrollment.bank.identity_shape]},
        "parity_max_abs_error": error,
    }
    sidecar["bank"] = {"file": bank_file.name, "sha256": file_sha256(bank_temporary), "avatars": len(enrollment.bank.records)}
    if enrollment.student is not None:
        # Refinement runs in PyTorch (the graphs cannot be differentiated by ONNX Runtime): the encoder's and decoder's
        # weights as plain arrays (no pickle), without the avatars' own identity tensors (the bank holds those).
        weights_file = weights_path(out_path)
        weights_temporary = stage(weights_file)
        state = {name: tensor.detach().cpu().numpy() for name, tensor in enrollment.student.state_dict().items() if name != "identity"}
        with open(weights_temporary, "wb") as handle:
            np.savez(handle, **state)
        sidecar["weights"] = {
            "file": weights_file.name,
            "sha256": file_sha256(weights_temporary),
            "student": asdict(enrollment.student.config),
            "use": "few-shot refinement of enrolled avatars in PyTorch (megalive-train enroll)",
        }
    return error


def _parity(module: nn.Module, onnx_path: Path, inputs: dict[str, torch.Tensor], *, outputs: tuple[str, ...] = AVATAR_OUTPUTS) -> float:
    import onnxruntime as ort

    with torch.no_grad():
        produced = module(*inputs.values())
        expected = [t.numpy() for t in (produced if isinstance(produced, tuple) else (produced,))]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(list(outputs), {name: tensor.numpy() for name, tensor in inputs.items()})
    return float(max(np.abs(a - e).max() for a, e in zip(actual, expected)))


THUMBNAIL_SIZE = 96  # px, the neutral avatar pictures beside the graph (OUT.thumbs.npy)


@dataclass(frozen=True)
class StudentExport:
    """A student checkpoint and its capture drivers (the puppet; the landmark solver when given), loaded and checked
    against each other: what export_student writes."""

    checkpoint_path: Path
    model: nn.Module
    checkpoint: Mapping[str, Any]  # the student's checkpoint (avatar names, step, configs)
    dataset_root: Path  # the paired dataset it was trained on (its neutral frames become the thumbnails)
    dataset_command: str
    extra_drivers: tuple[ExtraDriver, ...]
    solver_commands: tuple[str, ...]
    embedder: nn.Module | None = None  # the checkpoint's identity embedder (`megalive-train embedder`): contract v2

    @property
    def contract(self) -> int:
        return 1 if self.embedder is None else 2

    @property
    def resolution(self) -> int:
        return int(self.model.config.resolution)

    @property
    def drivers(self) -> list[str]:
        return ["image", *(extra.kind for extra in self.extra_drivers)]

    def describe(self, out_path: str | Path) -> dict[str, Any]:
        """What export_student would write to out_path (the dry run's report)."""
        return {
            "out": str(out_path),
            "resolution": self.resolution,
            "avatars": self.checkpoint["avatar_names"],
            "step": int(self.checkpoint["step"]),
            "drivers": self.drivers,
            "capture": {extra.kind: dict(extra.config) for extra in self.extra_drivers},
            "contract": self.contract,
        }

    def provenance(self, command: str) -> str:
        """Every command that made the model, in order: synth, student training, landmark solver, then this export's."""
        trained_by = self.checkpoint.get("commands") or [self.checkpoint["train_config"]["command"]]  # every training phase
        return " && ".join([self.dataset_command, *trained_by, *self.solver_commands, command])

    def sidecar_config(self) -> dict[str, Any]:
        checkpoint = self.checkpoint
        return {"student": checkpoint["model_config"], "train": checkpoint["train_config"], "step": int(checkpoint["step"])}


def default_puppet_resolution(resolution: int) -> int:
    """The side the puppet draws at for a student of ``resolution``: 3/8 of it (96 at 256), a multiple of 8. Measured
    (README, Performance capture): drawing at 96 keeps the capture path within 1.5× of the image path at 256."""
    return max(16, resolution * 3 // 8 // 8 * 8)


def load_student_export(
    checkpoint_path: str | Path,
    *,
    capture: bool = True,
    landmark_solver: str | Path | None = None,
    puppet_resolution: int | None = None,
    expect_preset: str | None = None,
) -> StudentExport:
    """Load a student checkpoint and build its capture drivers: the ARKit puppet (``capture``) and, given a landmark
    solver checkpoint, the landmark one. Raises TrainingError (another preset, a puppet resolution out of range, an
    unreadable checkpoint) or DatasetError (the training dataset is gone), each one line."""
    from models.checkpoints import embedder_from_checkpoint, landmark_solver_from_checkpoint, load_checkpoint, student_from_checkpoint
    from models.data.paired import read_meta
    from models.megaportraits.puppet import CAPTURE_INPUTS, Puppet, PuppetConfig, PuppetDrivenStudent
    from models.megaportraits.student import IdentityInputStudent
    from models.training.common import TrainingError

    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    model = student_from_checkpoint(checkpoint, expect_preset=expect_preset)
    embedder = embedder_from_checkpoint(checkpoint) if "embedder" in checkpoint else None
    # Contract v2 (an embedder beside the student): every graph takes identity tensors in place of the avatar index.
    student_graph = model if embedder is None else IdentityInputStudent(student=model)
    meta = read_meta(Path(checkpoint["train_config"]["data"]))
    resolution = int(model.config.resolution)
    if landmark_solver is not None and not capture:
        raise TrainingError("the landmark driver draws through the puppet: --landmark-solver needs the capture drivers on")
    extras: list[ExtraDriver] = []
    commands: list[str] = []
    if capture:
        try:
            puppet_config = PuppetConfig(
                render_resolution=puppet_resolution or default_puppet_resolution(resolution), resolution=resolution
            )
        except ValueError as error:
            raise TrainingError(f"--puppet-resolution: {error}") from None
        puppet = Puppet(config=puppet_config)
        solvers = {"arkit": None}
        if landmark_solver is not None:
            solver_checkpoint = load_checkpoint(Path(landmark_solver))
            solvers["landmarks"] = landmark_solver_from_checkpoint(solver_checkpoint, path=Path(landmark_solver))
            commands.append(solver_checkpoint["train_config"].get("command", ""))
        for kind, solver in solvers.items():
            input_name, input_shape = CAPTURE_INPUTS[kind]
            config: dict[str, Any] = {"design": "puppet", "puppet": asdict(puppet_config)}
            if solver is not None:
                config["landmark_solver"] = {
                    "path": str(landmark_solver),
                    "model": asdict(solver.config),
                    "train": solver_checkpoint["train_config"],
                    "held_out": solver_checkpoint.get("held_out"),  # its RMS errors beside answering zero and the mean
                }
            extras.append(
                ExtraDriver(
                    kind=kind,
                    module=PuppetDrivenStudent(student=student_graph, puppet=puppet, solver=solver),
                    input_name=input_name,
                    input_shape=input_shape,
                    config=config,
                )
            )
    return StudentExport(
        checkpoint_path=checkpoint_path,
        model=model,
        checkpoint=checkpoint,
        dataset_root=meta.root,
        dataset_command=meta.command,
        extra_drivers=tuple(extras),
        solver_commands=tuple(commands),
        embedder=embedder,
    )


def neutral_thumbnails(dataset_root: str | Path, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """The dataset's neutral avatar frames as A×size×size×3 uint8 (bilinear)."""
    from PIL import Image

    neutral = np.load(Path(dataset_root) / "neutral_rgba.npy", allow_pickle=False)  # A×H×W×4
    return np.stack([np.asarray(Image.fromarray(frame[:, :, :3]).resize((size, size), Image.BILINEAR)) for frame in neutral])


def export_student(student: StudentExport, out_path: str | Path, *, command: str, precision: str = "fp32") -> ExportReport:
    """Write a loaded student (and its capture drivers' graphs) as OUT.onnx + sidecar + thumbnails; ``command`` is this
    export's own command line, recorded after the commands that made the dataset, the student and the landmark solver.
    ``precision``: as export_avatar_model's."""
    resolution = student.resolution
    provenance = student.provenance(command)
    thumbnails = neutral_thumbnails(student.dataset_root)
    enrollment = None
    module: nn.Module = student.model
    if student.embedder is not None:
        from models.megaportraits.student import IdentityInputStudent

        module = IdentityInputStudent(student=student.model)
        records = tuple(
            AvatarRecord(
                name=name, consent=None, provenance={"how": "a SyntheticHeads avatar trained with the student", "command": provenance}
            )
            for name in student.checkpoint["avatar_names"]
        )
        identity = student.model.identity.detach().numpy().astype(np.float32)
        enrollment = EnrollmentExport(
            embedder=student.embedder,
            bank=AvatarBank(identity=identity, thumbnails=thumbnails, records=records),
            student=student.model,
        )
    return export_avatar_model(
        module,
        out_path=out_path,
        resolution=(resolution, resolution),
        avatar_names=student.checkpoint["avatar_names"],
        command=provenance,
        config=student.sidecar_config(),
        extra_drivers=student.extra_drivers,
        thumbnails=thumbnails,
        enrollment=enrollment,
        precision=precision,
    )
