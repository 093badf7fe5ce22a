"""Checkpoint files: one layout, written atomically, read safely, and one loader per kind.

Loading a trained model (a teacher for evaluation or distillation, say) goes through here and never
imports a trainer. Errors are ``TrainingError`` with one line for the user.

Layout. A checkpoint is one dict saved with torch.save, tensors and plain values only (read back with
weights_only=True: no code runs on load). ``save_checkpoint(payload, path, kind=...)`` writes:

    kind            which model it holds: one of KINDS (BASE_KIND, STUDENT_KIND, LANDMARK_SOLVER_KIND, REGRESSOR_KIND, FEWSHOT_KIND)
    format_version  FORMAT_VERSION; absent in files written before this layout
    config          the resolved config, under CONFIG_KEYS[kind]: the network's own config (enough to
                    rebuild it: "model_config") and the run's
                    "train_config"; the base model also keeps "resolved_config" (its run's config.json)
    weights         the state dicts, under WEIGHT_KEYS[kind] (base: "generator" and "discriminator";
                    student, landmark solver and regressor: "model"; few-shot: "generator", "embedder", "discriminator")
    digest          state_digest of those weights, in WEIGHT_KEYS order
    ...             the trainer's own state beside them (optimisers, schedulers, step, RNG, ...)

The config and weight keys are the names the older formats used, so a loader reads old and new files
alike. Older files carry no format_version, and students no kind either: a file without a kind is a
student when it has "model" and "model_config" (``checkpoint_kind``). Anything else (the driver adapters
that the puppet replaced included) is refused with one line naming the kind found.

Loaders: ``load_base``, ``load_student``, ``load_landmark_solver``, ``load_fewshot`` here; the regressor's is
models.nets.parameter_regressor.load_regressor (its network is defined there, and that module writes here).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from models.fewshot.config import FewShotConfig
from models.fewshot.discriminator import FewShotDiscriminator
from models.fewshot.embedder import FewShotEmbedder
from models.fewshot.generator import FewShotGenerator
from models.megaportraits.base import BaseConfig, BaseModel, base_config
from models.megaportraits.identity_embedder import IdentityEmbedder, IdentityEmbedderConfig
from models.megaportraits.puppet import LandmarkSolver, LandmarkSolverConfig
from models.megaportraits.student import Student, StudentConfig
from models.training.common import TrainingError

FORMAT_VERSION = 1
BASE_KIND = "megaportraits-base"
STUDENT_KIND = "megaportraits-student"
LANDMARK_SOLVER_KIND = "megaportraits-landmark-solver"
REGRESSOR_KIND = "megaportraits-parameter-regressor"
FEWSHOT_KIND = "fewshot-talking-heads"
HEAD_POSE_KIND = "megaportraits-head-pose"
ENHANCER_KIND = "megaportraits-enhancer"
KINDS = (BASE_KIND, STUDENT_KIND, LANDMARK_SOLVER_KIND, REGRESSOR_KIND, FEWSHOT_KIND, HEAD_POSE_KIND, ENHANCER_KIND)
WEIGHT_KEYS: dict[str, tuple[str, ...]] = {
    BASE_KIND: ("generator", "discriminator"),
    STUDENT_KIND: ("model",),
    LANDMARK_SOLVER_KIND: ("model",),
    REGRESSOR_KIND: ("model",),
    FEWSHOT_KIND: ("generator", "embedder", "discriminator"),
    HEAD_POSE_KIND: ("model",),
    ENHANCER_KIND: ("enhancer", "discriminator"),
}
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    BASE_KIND: ("model_config", "train_config", "resolved_config"),
    STUDENT_KIND: ("model_config", "train_config"),
    LANDMARK_SOLVER_KIND: ("model_config", "train_config"),
    REGRESSOR_KIND: ("model_config", "train_config"),
    FEWSHOT_KIND: ("model_config", "train_config"),
    HEAD_POSE_KIND: ("model_config", "train_config"),
    ENHANCER_KIND: ("model_config", "train_config"),
}
_DESCRIPTIONS = {
    BASE_KIND: "a MegaPortraits base-model checkpoint",
    STUDENT_KIND: "a student checkpoint",
    LANDMARK_SOLVER_KIND: "a landmark-solver checkpoint",
    REGRESSOR_KIND: "a parameter-regressor checkpoint",
    FEWSHOT_KIND: "a few-shot talking heads checkpoint (megalive-train fewshot-meta)",
    HEAD_POSE_KIND: "a head-pose network checkpoint (megalive-train head-pose)",
    ENHANCER_KIND: "a high-resolution enhancer checkpoint (megalive-train enhancer)",
}


def state_digest(*states: dict[str, Tensor]) -> str:
    """A short SHA-256 of state dicts' names and exact tensor bytes: equal digests, equal weights."""
    digest = hashlib.sha256()
    for state in states:
        for name in sorted(state):
            tensor = state[name].detach().cpu().contiguous().reshape(-1)
            digest.update(name.encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(payload: dict[str, Any], path: Path, *, kind: str) -> None:
    """Write ``payload`` in the layout above (kind, format_version and digest added), under a temporary
    name then renamed. ``payload`` holds the kind's WEIGHT_KEYS and CONFIG_KEYS."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r} (known: {', '.join(KINDS)})")
    missing = [key for key in (*WEIGHT_KEYS[kind], *CONFIG_KEYS[kind]) if key not in payload]
    if missing:
        raise ValueError(f"a {kind} checkpoint needs {', '.join(missing)}")
    digest = state_digest(*(payload[key] for key in WEIGHT_KEYS[kind]))
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save({**payload, "kind": kind, "format_version": FORMAT_VERSION, "digest": digest}, temporary)
    temporary.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's tensors and plain values (weights_only: no code runs on load)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"checkpoint not found: {path}") from None
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise TrainingError(f"checkpoint {path} is unreadable: {str(error).splitlines()[0]}") from None


def checkpoint_kind(checkpoint: dict[str, Any]) -> str | None:
    """The kind a checkpoint holds: its "kind", else inferred from the older formats' keys; None if neither."""
    kind = checkpoint.get("kind")
    if kind is not None:
        return str(kind)
    if "model" in checkpoint and "model_config" in checkpoint:
        return STUDENT_KIND
    return None


def kind_found(checkpoint: dict[str, Any]) -> str:
    """The kind a checkpoint holds, in words for a one-line refusal."""
    found = checkpoint_kind(checkpoint)
    if found is None:
        return f"it holds no kind (known kinds: {', '.join(KINDS)})"
    return f"it holds kind {found!r}" + ("" if found in KINDS else f" (known kinds: {', '.join(KINDS)})")


def check_kind(checkpoint: dict[str, Any], kind: str, *, where: str = "checkpoint") -> None:
    """Refuse a checkpoint of another (or an unknown) kind, in one line naming the kind found."""
    if checkpoint_kind(checkpoint) != kind:
        raise TrainingError(f"{where} is not {_DESCRIPTIONS[kind]}: {kind_found(checkpoint)}")


def _tuples(config: dict[str, Any]) -> dict[str, Any]:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}


def load_state(module: nn.Module, checkpoint: dict[str, Any], key: str, *, path: Path) -> None:
    """``module``'s weights from ``checkpoint[key]``; a mismatch raises TrainingError (one line)."""
    try:
        module.load_state_dict(checkpoint[key])
    except (KeyError, RuntimeError) as error:
        raise TrainingError(f"{path}: its {key} does not match the model it describes: {str(error).strip().splitlines()[0]}") from None


# -- base model (the teacher) -------------------------------------------------------------------------


# A BaseConfig field added after a checkpoint was saved is read as its default (the option off).
BASE_CONFIG_DEFAULTS: dict[str, Any] = {field.name: field.default for field in fields(BaseConfig) if field.default is not MISSING}


def check_base_checkpoint(checkpoint: dict[str, Any], *, path: Path, preset: str, role: str) -> None:
    """Refuse a checkpoint that is not a base model of ``preset`` (one line, naming ``role``: resume or --init)."""
    if checkpoint.get("kind") != BASE_KIND or not isinstance(checkpoint.get("model_config"), dict):
        raise TrainingError(f"{role} {path} is not a MegaPortraits base-model checkpoint: {kind_found(checkpoint)}")
    saved = checkpoint.get("train_config", {}).get("preset")
    if saved != preset:
        raise TrainingError(f"{role} {path} holds a base model of preset {saved!r}, not {preset!r}")
    saved_config = {**BASE_CONFIG_DEFAULTS, **_tuples(checkpoint["model_config"])}
    options = {name: saved_config[name] for name in ("pose_source", "head_pose_preset", "feature_crops", "decoder_expression")}
    if saved_config != asdict(base_config(preset, **options)):
        raise TrainingError(f"{role} {path}: its model config differs from preset {preset!r} (the preset changed since)")


def load_base_weights(model: BaseModel, checkpoint: dict[str, Any], *, path: Path) -> None:
    """A base checkpoint's generator weights into ``model``, which may add what the checkpoint lacks, each starting
    exactly where the checkpoint was (the output is the checkpoint's until training moves the new weights):
    - E_mtn's feature crops: the crop branches as built, their columns of z's linear layer zero;
    - G2D's expression conditioning: each adaptive GroupNorm's shift and scale biases are the plain GroupNorm's affine
      parameters (scale: weight - 1), their weights on z zero.
    A checkpoint with either that the model lacks raises TrainingError (one line)."""
    saved_config = checkpoint.get("model_config", {})
    added = {
        name: (bool(saved_config.get(name, False)), bool(getattr(model.config, name))) for name in ("feature_crops", "decoder_expression")
    }
    for name, (saved, wanted) in added.items():
        if saved and not wanted:
            raise TrainingError(f"{path} was trained with {name} and this model is not: add --{name.replace('_', '-')}")
    state = dict(checkpoint.get("generator", {}))
    own = model.state_dict()
    if added["feature_crops"] == (False, True):
        key = "motion_encoder.expression.weight"  # Z×w in the checkpoint, Z×(w + crop features) here
        if key in state:
            saved = state[key]
            state[key] = torch.cat([saved, saved.new_zeros(saved.shape[0], own[key].shape[1] - saved.shape[1])], dim=1)
        state.update({name: value for name, value in own.items() if name.startswith("motion_encoder.crops.")})
    if added["decoder_expression"] == (False, True):
        for name in [name for name in state if name.startswith("decoder.") and ".norm_" in name]:
            norm, parameter = name.rsplit(".", 1)  # e.g. decoder.up.0.norm_first, weight (C) or bias (C)
            if f"{norm}.scale.bias" not in own:
                continue  # a plain GroupNorm here too (the head's)
            value = state.pop(name)
            target = "scale" if parameter == "weight" else "shift"
            state[f"{norm}.{target}.bias"] = value - 1 if parameter == "weight" else value
            state[f"{norm}.{target}.weight"] = torch.zeros_like(own[f"{norm}.{target}.weight"])
    load_state(model, {"generator": state}, "generator", path=path)


def base_model_from_checkpoint(checkpoint: dict[str, Any], *, path: Path, expect_preset: str | None = None) -> BaseModel:
    """The generator saved in a checkpoint, rebuilt from the config saved beside it."""
    preset = checkpoint.get("train_config", {}).get("preset") if expect_preset is None else expect_preset
    check_base_checkpoint(checkpoint, path=path, preset=str(preset), role="checkpoint")
    model = BaseModel(config=BaseConfig(**_tuples(checkpoint["model_config"])))  # pose source and head-pose preset as saved
    load_state(model, checkpoint, "generator", path=path)
    return model


def load_base(path: Path, *, expect_preset: str | None = None) -> BaseModel:
    """A `megalive-train base` checkpoint's generator; anything else raises TrainingError (one line)."""
    return base_model_from_checkpoint(load_checkpoint(path), path=path, expect_preset=expect_preset)


# -- student ------------------------------------------------------------------------------------------


def student_from_checkpoint(checkpoint: dict[str, Any], *, expect_preset: str | None = None) -> Student:
    """Rebuild the student from the config saved in the checkpoint; refuse a preset mismatch."""
    found = checkpoint.get("kind")
    if found is not None and found != STUDENT_KIND:
        check_kind(checkpoint, STUDENT_KIND)
    model_config = checkpoint.get("model_config")
    if not isinstance(model_config, dict):
        raise TrainingError("checkpoint has no model_config: not a student checkpoint")
    preset = checkpoint.get("train_config", {}).get("preset")
    if expect_preset is not None and preset != expect_preset:
        raise TrainingError(f"checkpoint was trained with preset {preset!r}, not {expect_preset!r}")
    try:
        config = StudentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in model_config.items()})
        model = Student(config=config)
        model.load_state_dict(checkpoint["model"])
    except (TypeError, KeyError, RuntimeError) as error:
        raise TrainingError(f"checkpoint does not match the student it describes: {str(error).splitlines()[0]}") from None
    return model


def student_from_weights(weights_path: Path, student_config: dict[str, Any]) -> Student:
    """The student of an exported contract-v2 model (its sidecar's ``weights`` entry: the config and the npz of its
    weights, without identity tensors), for refinement; TrainingError (one line) when they do not match."""
    try:
        config = StudentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in student_config.items()})
        model = Student(config=replace(config, num_avatars=1))
        with np.load(weights_path, allow_pickle=False) as arrays:
            state = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
        state["identity"] = model.identity.detach()  # a placeholder row: refinement brings its own tensor
        model.load_state_dict(state)
    except (TypeError, KeyError, RuntimeError, ValueError, OSError) as error:
        raise TrainingError(f"{weights_path}: not the student's weights its sidecar describes ({str(error).splitlines()[0]})") from None
    return model


def embedder_from_checkpoint(checkpoint: dict[str, Any]) -> IdentityEmbedder:
    """The identity embedder of an enrollment checkpoint (`megalive-train embedder`); TrainingError without one."""
    if "embedder" not in checkpoint or "embedder_config" not in checkpoint:
        raise TrainingError("the checkpoint holds no identity embedder (train one with `megalive-train embedder`)")
    settings = {key: tuple(value) if isinstance(value, list) else value for key, value in checkpoint["embedder_config"].items()}
    embedder = IdentityEmbedder(config=IdentityEmbedderConfig(**settings))
    embedder.load_state_dict(checkpoint["embedder"])
    return embedder


def load_student(path: Path, *, expect_preset: str | None = None) -> Student:
    """A `megalive-train student` checkpoint's student; anything else raises TrainingError (one line)."""
    return student_from_checkpoint(load_checkpoint(path), expect_preset=expect_preset)


# -- landmark solver -----------------------------------------------------------------------------------


def landmark_solver_from_checkpoint(checkpoint: dict[str, Any], *, path: Path) -> LandmarkSolver:
    """A `megalive-train landmark-solver` checkpoint's solver; anything else raises TrainingError (one line)."""
    check_kind(checkpoint, LANDMARK_SOLVER_KIND, where=str(path))
    try:
        solver = LandmarkSolver(config=LandmarkSolverConfig(**checkpoint["model_config"]))
        solver.load_state_dict(checkpoint["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as error:
        raise TrainingError(f"{path}: a landmark solver that does not match its config: {str(error).splitlines()[0]}") from None
    return solver.eval()


def load_landmark_solver(path: Path) -> LandmarkSolver:
    return landmark_solver_from_checkpoint(load_checkpoint(path), path=path)


# -- few-shot talking heads -----------------------------------------------------------------------------


class FewShotNetworks(NamedTuple):
    config: FewShotConfig
    preset: str  # the preset the run was made with
    generator: FewShotGenerator
    embedder: FewShotEmbedder
    discriminator: FewShotDiscriminator


def fewshot_from_checkpoint(checkpoint: dict[str, Any], *, path: Path, expect_preset: str | None = None) -> FewShotNetworks:
    """A `megalive-train fewshot-meta` checkpoint's networks (in train mode); anything else, or a checkpoint of another
    preset than ``expect_preset``, raises TrainingError (one line)."""
    check_kind(checkpoint, FEWSHOT_KIND, where=str(path))
    preset = str(checkpoint["train_config"].get("preset", ""))
    if expect_preset is not None and preset != expect_preset:
        raise TrainingError(f"{path} is a few-shot checkpoint of preset {preset!r}, not {expect_preset!r}")
    try:
        config = FewShotConfig(**_tuples(checkpoint["model_config"]))
        networks = FewShotNetworks(
            config=config,
            preset=preset,
            generator=FewShotGenerator(config=config),
            embedder=FewShotEmbedder(config=config),
            discriminator=FewShotDiscriminator(config=config),
        )
        for key in WEIGHT_KEYS[FEWSHOT_KIND]:
            getattr(networks, key).load_state_dict(checkpoint[key])
    except (TypeError, KeyError, RuntimeError, ValueError) as error:
        raise TrainingError(f"{path}: few-shot networks that do not match their config: {str(error).splitlines()[0]}") from None
    return networks


def load_fewshot(path: Path, *, expect_preset: str | None = None) -> FewShotNetworks:
    return fewshot_from_checkpoint(load_checkpoint(path), path=path, expect_preset=expect_preset)


def slim_checkpoint(source: Path, out: Path) -> Path:
    """A copy of ``source`` with its kind's weights and configs only, without the trainer's state (optimisers, a
    discriminator): what export and the evaluation read, a fraction of the size; it cannot resume training."""
    checkpoint = load_checkpoint(source)
    kind = checkpoint_kind(checkpoint)
    if kind is None:
        raise TrainingError(f"{source} is not a checkpoint of a known kind: {kind_found(checkpoint)}")
    keys = (*WEIGHT_KEYS[kind], *CONFIG_KEYS[kind], "avatar_names", "step", "commands")
    kept = {key: checkpoint[key] for key in keys if key in checkpoint}
    save_checkpoint(kept, Path(out), kind=kind)
    return Path(out)
