"""The model card: the JSON sidecar beside an exported avatar model (``<stem>.json`` beside ``<stem>.onnx``), its
schema constants and its one checked reader.

Written by `megalive-train export` (models/export.py), read by the server's engine (server/engine.py) and by the
evaluation of an exported student (models/evaluation.py). The sidecar names the resolution, the avatars, the driver
kinds the model accepts, the exact command that produced it and (``model_sha256``, in the card and in each adapter
entry) the SHA-256 of every graph it names. Export renames the graphs into place before the sidecar, so a crash in
between leaves new graphs beside the old sidecar: the digests make the reader refuse that pair. Sidecars without
digests (older exports) load unchecked. A model with capture drivers has one more graph per capture kind beside it
(``adapters.<kind>.model_file``), with the capture signal as its input.

Contract v2 (format_version 2, DESIGN §4.3): the graphs take the avatars' identity tensors (``identity``, B×C×S×S)
in place of the avatar index; the shipped avatars' tensors are in the avatar bank beside the model (``bank``,
contract/avatar_bank.py, digest-checked like the graphs), and the identity embedder's graph (``embedder``: portrait
frames B×K×3×H×W -> identity B×C×S×S) enrolls new ones. Version-1 cards (avatar index) still load.

Three families of model share the contract (``ModelCard.family``): a MegaPortraits **student** (the default), a
few-shot **personal** model (``driver_input``: landmark-driven) and a MegaPortraits **teacher** served directly
(``teacher``: a contract-v2 model whose identity tensor is the source portrait's encoded state, one-shot, driven by
pictures only; models/export_teacher.py).

Standard library only (the hosts ship a copy of this file).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

SIDECAR_FORMAT = "megalive-avatar-model"
SIDECAR_FORMAT_VERSION = 1  # contract v1: the graphs take an avatar index
SIDECAR_FORMAT_VERSION_IDENTITY = 2  # contract v2: the graphs take identity tensors; a bank and an embedder beside them
PRECISIONS = ("fp32", "fp16")  # the sidecar's "precision": the graphs' arithmetic (inputs and outputs are float32 either way)
SIDECAR_FORMAT_VERSIONS = (SIDECAR_FORMAT_VERSION, SIDECAR_FORMAT_VERSION_IDENTITY)


class ModelCardError(ValueError):
    """A model or sidecar that cannot be used; the message is one line for the user."""


@dataclass(frozen=True, kw_only=True)
class AdapterGraph:
    """A further driver kind's graph, as the sidecar names it."""

    kind: str
    model_path: Path
    input_name: str
    input_shape: tuple[int, ...]  # per sample
    config: dict = field(default_factory=dict)  # what the exporter recorded about it (the puppet's settings, ...)
    outputs: tuple[str, ...] = ("rgb", "alpha")  # ("landmarks",): a landmark-driven model's signal -> points graph


@dataclass(frozen=True, kw_only=True)
class EnrollmentFiles:
    """Contract v2's files beside the graphs, as the sidecar names them."""

    identity_shape: tuple[int, int, int]  # C_id, S, S
    bank_path: Path  # the shipped avatars (contract/avatar_bank.py)
    embedder_path: Path  # frames B×K×3×H×W -> identity B×C_id×S×S
    weights_path: Path | None = None  # the student's PyTorch weights, for few-shot refinement; None: not exported
    student_config: dict | None = None  # the student's config, to rebuild it around those weights


@dataclass(frozen=True, kw_only=True)
class LandmarkImageInput:
    """A landmark-driven model (the few-shot talking heads, DESIGN §4.4): its main graph's ``driver`` is the landmark
    image the server draws from 68 points (contract/landmark_image.py), not a camera picture. ``landmarks`` sessions
    are drawn directly, ``image`` sessions through the server's face mesh (crop "auto"), ``arkit`` through the
    adapter graph, which gives landmarks (``outputs: ["landmarks"]``) instead of pictures."""

    line_thickness: float
    neutral_landmarks: tuple[tuple[tuple[float, float], ...], ...]  # per avatar, 68 (x, y) in [0, 1]: for retargeting


@dataclass(frozen=True, kw_only=True)
class TeacherModel:
    """A MegaPortraits base model (the teacher, DESIGN §4.1) served as a one-shot avatar model (the sidecar's ``teacher``
    entry, written by models/export_teacher.py). Its identity tensor is the source portrait's encoded state (the
    canonical volume and the appearance descriptor, packed as the entry's ``identity`` says); the embedder graph
    encodes one portrait (the first of K); the main graph runs the driver's half of the teacher, plus the enhancer
    when ``enhancer`` is set (the card's resolution is then twice ``teacher_resolution``)."""

    preset: str  # the base model's preset (tiny, cpu128, paper256, paper512)
    teacher_resolution: int  # the base model's own side
    pose_source: str  # "pretrained" (a frozen head-pose network inside E_mtn) or "learned" (E_mtn's own pose head)
    pose: str  # where the head pose comes from, in words
    enhancer: bool  # the high-resolution enhancer is part of the graph
    entry: dict = field(default_factory=dict)  # the whole sidecar entry (`hello` shows it without its files and commands)


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What the sidecar says about a model."""

    model_path: Path
    name: str
    resolution: tuple[int, int]  # (H, W)
    avatar_names: tuple[str, ...]
    drivers: tuple[str, ...]
    command: str
    config_hash: str
    thumbnails_path: Path | None
    gflops_per_frame: float | None  # from the exporter's layer count; None for models without it
    adapters: tuple[AdapterGraph, ...] = ()
    enrollment: EnrollmentFiles | None = None  # contract v2; None for v1 models (avatar index input)
    landmark_input: LandmarkImageInput | None = None  # a landmark-driven model; None: the driver is a picture
    teacher: TeacherModel | None = None  # a MegaPortraits teacher served directly; None: another family

    @property
    def contract(self) -> int:
        return 1 if self.enrollment is None else 2

    @property
    def family(self) -> str:
        """The model's family: teacher, personal (a landmark-driven few-shot model) or student."""
        if self.teacher is not None:
            return "teacher"
        return "personal" if self.landmark_input is not None else "student"

    @property
    def num_avatars(self) -> int:
        return len(self.avatar_names)

    def adapter(self, kind: str) -> AdapterGraph | None:
        """The graph of driver ``kind`` (not "image": that one is ``model_path``), or None."""
        return next((adapter for adapter in self.adapters if adapter.kind == kind), None)


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def file_sha256(path: Path) -> str:
    """The full hex SHA-256 of a file, as the sidecar records it for each graph."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _check_graph_digest(graph: Path, expected: object, card_path: Path) -> None:
    """Refuse a graph whose bytes are not the ones its sidecar was written with (an export killed between its
    renames, or files copied from two exports). No digest recorded: nothing to check."""
    if expected is None:
        return
    if not isinstance(expected, str) or len(expected) != 64:
        raise ModelCardError(f"{card_path}: malformed model_sha256 for {graph.name} (expected 64 hex digits)")
    try:
        actual = file_sha256(graph)
    except OSError as error:
        raise ModelCardError(f"cannot read {graph}: {error}") from None
    if actual != expected.lower():
        raise ModelCardError(
            f"{graph} does not match its sidecar {card_path.name} (SHA-256 differs: an interrupted export "
            "or files from two exports); re-run megalive-train export"
        )


def read_model_card(model_path: str | Path) -> ModelCard:
    """Read and check the sidecar of a model file (and the digests of the graphs it names).
    Raises ModelCardError with a one-line reason."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelCardError(f"model file not found: {model_path}")
    card_path = sidecar_path(model_path)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelCardError(f"model sidecar not found: {card_path} (export writes it next to the model)") from None
    except (OSError, ValueError) as error:
        raise ModelCardError(f"model sidecar {card_path} is unreadable: {error}") from None
    if not isinstance(card, dict) or card.get("format") != SIDECAR_FORMAT:
        raise ModelCardError(f"{card_path} is not a {SIDECAR_FORMAT} sidecar")
    if card.get("format_version") not in SIDECAR_FORMAT_VERSIONS:
        readable = " and ".join(map(str, SIDECAR_FORMAT_VERSIONS))
        raise ModelCardError(f"{card_path}: sidecar version {card.get('format_version')!r}, this server reads {readable}")
    try:
        height, width = (int(n) for n in card["resolution"])
        avatars = tuple(str(name) for name in card["avatars"])
        drivers = tuple(str(kind) for kind in card.get("drivers", ["image"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ModelCardError(f"{card_path}: missing or malformed field ({error})") from None
    if not avatars:
        raise ModelCardError(f"{card_path}: the model has no avatars")
    _check_graph_digest(model_path, card.get("model_sha256"), card_path)
    adapters = []
    for kind, entry in (card.get("adapters") or {}).items():
        try:
            adapter = AdapterGraph(
                kind=str(kind),
                model_path=model_path.parent / str(entry["model_file"]),
                input_name=str(entry["input"]["name"]),
                input_shape=tuple(int(n) for n in entry["input"]["shape"][1:]),
                config=dict(entry.get("config") or {}),
                outputs=tuple(str(name) for name in entry.get("outputs", ("rgb", "alpha"))),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelCardError(f"{card_path}: malformed adapters.{kind} ({error})") from None
        if kind not in drivers:
            raise ModelCardError(f"{card_path}: adapters.{kind} is not among the drivers {list(drivers)}")
        if not adapter.model_path.is_file():
            raise ModelCardError(f"{card_path}: the {kind} graph {adapter.model_path.name} is missing beside the model")
        _check_graph_digest(adapter.model_path, entry.get("model_sha256"), card_path)
        adapters.append(adapter)
    landmark_input = _landmark_input(card, card_path, len(avatars))
    native = {"image", "landmarks"} if landmark_input is not None else {"image"}  # the server draws landmarks itself
    missing = [kind for kind in drivers if kind not in native and kind not in {a.kind for a in adapters}]
    if missing:
        raise ModelCardError(f"{card_path}: drivers {missing} have no graph under adapters")
    thumbnails = card.get("thumbnails")
    enrollment = _enrollment_files(card, model_path, card_path) if card["format_version"] == SIDECAR_FORMAT_VERSION_IDENTITY else None
    teacher = _teacher_model(card, card_path, resolution=(height, width), drivers=drivers, enrollment=enrollment)
    if teacher is not None and landmark_input is not None:
        raise ModelCardError(f"{card_path}: a teacher model is driven by pictures, not by landmark images (driver_input)")
    return ModelCard(
        model_path=model_path,
        name=str(card.get("name", model_path.stem)),
        resolution=(height, width),
        avatar_names=avatars,
        drivers=drivers,
        command=str(card.get("command", "")),
        config_hash=str(card.get("config_hash", "")),
        thumbnails_path=(model_path.parent / thumbnails) if thumbnails else None,
        gflops_per_frame=float(card["gflops_per_frame"]) if isinstance(card.get("gflops_per_frame"), (int, float)) else None,
        adapters=tuple(adapters),
        enrollment=enrollment,
        landmark_input=landmark_input,
        teacher=teacher,
    )


def _landmark_input(card: dict, card_path: Path, avatars: int) -> LandmarkImageInput | None:
    entry = card.get("driver_input")
    if entry is None:
        return None
    try:
        if entry["kind"] != "landmark_image":
            raise ValueError(f"unknown driver_input kind {entry['kind']!r}")
        neutral = tuple(tuple((float(x), float(y)) for x, y in person) for person in entry["neutral_landmarks"])
        thickness = float(entry["line_thickness"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelCardError(f"{card_path}: malformed driver_input ({error})") from None
    if len(neutral) != avatars or any(len(person) != 68 for person in neutral) or not thickness > 0:
        raise ModelCardError(f"{card_path}: driver_input needs 68 neutral landmarks per avatar ({avatars}) and a positive line thickness")
    return LandmarkImageInput(line_thickness=thickness, neutral_landmarks=neutral)


def _teacher_model(
    card: dict, card_path: Path, *, resolution: tuple[int, int], drivers: tuple[str, ...], enrollment: EnrollmentFiles | None
) -> TeacherModel | None:
    """The ``teacher`` entry of a teacher served directly, checked against the rest of the card; None without one."""
    entry = card.get("teacher")
    if entry is None:
        return None
    try:
        teacher = TeacherModel(
            preset=str(entry["preset"]),
            teacher_resolution=int(entry["teacher_resolution"]),
            pose_source=str(entry["pose_source"]),
            pose=str(entry["pose"]),
            enhancer=entry.get("enhancer") is not None,
            entry=dict(entry),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelCardError(f"{card_path}: malformed teacher entry ({error})") from None
    if enrollment is None:
        raise ModelCardError(f"{card_path}: a teacher model takes identity tensors (contract v2), but the card is version 1")
    if drivers != ("image",):
        raise ModelCardError(f"{card_path}: a teacher model is driven by pictures only, the card lists drivers {list(drivers)}")
    side = teacher.teacher_resolution * (2 if teacher.enhancer else 1)
    if resolution != (side, side):
        what = f"a {teacher.teacher_resolution} px teacher" + (" with its enhancer" if teacher.enhancer else "")
        raise ModelCardError(f"{card_path}: {what} draws {side}×{side}, the card says {resolution[0]}×{resolution[1]}")
    return teacher


def _enrollment_files(card: dict, model_path: Path, card_path: Path) -> EnrollmentFiles:
    """Contract v2's bank and embedder, each beside the model and digest-checked."""
    try:
        channels, height, width = (int(n) for n in card["identity"]["shape"])
        bank = model_path.parent / str(card["bank"]["file"])
        embedder = model_path.parent / str(card["embedder"]["model_file"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelCardError(f"{card_path}: missing or malformed identity, bank or embedder field ({error})") from None
    files = [(bank, card["bank"]), (embedder, card["embedder"])]
    weights, student_config = None, None
    if "weights" in card:  # optional: a model without them enrolls one-shot only
        try:
            weights, student_config = model_path.parent / str(card["weights"]["file"]), dict(card["weights"]["student"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelCardError(f"{card_path}: malformed weights field ({error})") from None
        files.append((weights, card["weights"]))
    for path, entry in files:
        if not path.is_file():
            raise ModelCardError(f"{card_path}: {path.name} is missing beside the model")
        _check_graph_digest(path, entry.get("sha256", entry.get("model_sha256")), card_path)
    return EnrollmentFiles(
        identity_shape=(channels, height, width),
        bank_path=bank,
        embedder_path=embedder,
        weights_path=weights,
        student_config=student_config,
    )
