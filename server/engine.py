"""ONNX Runtime engine over an avatar model and its JSON sidecar (the model card, read and checked by
contract/model_card.py).

Contract for avatar models (written by `megalive-train export`, read here):

    inputs   driver  float32  B×3×H×W  in [0,1]
             avatar  int64    B         index into the card's avatar names
    outputs  rgb     float32  B×3×H×W  in [0,1]
             alpha   float32  B×1×H×W  in [0,1]

A model with capture drivers (DESIGN §4.5: the puppet, models/megaportraits/puppet.py) has one more graph per capture
kind beside it, ``<stem>.<kind>.onnx`` (the sidecar lists them under ``adapters``), with the same avatar input and
outputs and the capture signal in place of ``driver``:

    arkit      curves     float32  B×61     Live Link Face order (contract/arkit.py)
    landmarks  landmarks  float32  B×68×2   iBUG order, x/y in [0, 1] over the crop

A landmark-driven model (the few-shot talking heads, DESIGN §4.4; the card's ``landmark_input``) has the same main
graph, but its ``driver`` is a landmark image, not a camera picture: the engine draws each sample's 68 points with
contract/landmark_image.py ``draw_landmark_image`` (the drawing the model was trained on, at the card's line
thickness) and runs the main graph on the drawings. Its driver kinds, as ``run`` takes them:

    landmarks  B×68×2  x/y in [0, 1] over the crop -> drawn -> main graph
    arkit      B×61    -> ``<stem>.arkit.onnx`` (curves, avatar -> ``landmarks`` B×68×2, the puppet retargeted onto
                          each avatar's neutral face) -> drawn -> main graph
    image      refused: a camera picture is not a landmark image. The server's image sessions on such a model need
               crop "auto" and send the face mesh's 68 points as kind landmarks (server/worker.py).

The card also carries each avatar's neutral landmarks (``neutral_landmarks``), which the server retargets a driver's
landmarks onto (``retarget`` sessions: contract/landmark_image.py ``retarget_landmarks``).

Contract v2 (an enrollable model, DESIGN §4.3): every graph takes ``identity`` float32 B×C_id×S×S in place of
``avatar``. The engine keeps the avatars' identity tensors (contract/avatar_bank.py): the model's shipped bank
first, then the avatars enrolled on this machine (the user bank, ``bank_path``), and looks each frame's avatar up
there, so callers still name avatars by id. ``embed`` runs the identity embedder's graph (portrait frames ->
identity tensor) and ``enroll`` appends an avatar to the user bank (written to a temporary file, then renamed) and
to the engine at once. A user bank that cannot be read leaves the shipped avatars, and ``bank_problem`` says why.

A MegaPortraits teacher served directly (the card's ``teacher``: models/export_teacher.py) is a contract-v2 model
driven by pictures only: its identity tensor is the source portrait's encoded state (canonical volume and appearance
descriptor), its embedder graph the teacher's source half. It is one-shot: ``embed`` hands it the first of the K
frames. ``run`` and the banks are as for any v2 model.

Lanes (CPU): a batch of two or more frames is split across ``lanes`` copies of the graphs, each with its own ONNX
Runtime session of ``cores / lanes`` intra-op threads, run side by side (ONNX Runtime releases the GIL); a single frame
runs on the session with all the threads. One session's threads meet at every operator, and without spinning they
wait there for the operating system to wake them: on the 2-core box two one-thread sessions side by side ran 1.3–1.8×
the frames of one two-thread session (README, "Lanes"). The outputs are joined in the batch's order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from contract.avatar_bank import AvatarBank, AvatarBankError, AvatarRecord, check_name, read_bank, write_bank
from contract.landmark_image import draw_landmark_images
from contract.landmarks import NUM_LANDMARKS
from contract.model_card import ModelCard, ModelCardError, read_model_card

# Tried in this order; the first that the installed onnxruntime offers and that starts wins.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


# The model the repository ships (made by `make default-model`); serve, bench and demo default to it.
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "default" / "student.onnx"


class ModelError(Exception):
    """A model or sidecar that cannot be served; the message is one line for the user."""


def model_or_shipped(model_path: Path | None) -> Path:
    """The given model, or the shipped one; ModelError when neither is there."""
    if model_path is not None:
        return model_path
    if not SHIPPED_MODEL.is_file():
        raise ModelError(f"no --model given and the shipped model {SHIPPED_MODEL} is missing")
    return SHIPPED_MODEL


def load_model_card(model_path: str | Path) -> ModelCard:
    """Read and check the sidecar of a model file. Raises ModelError with a one-line reason."""
    try:
        return read_model_card(model_path)
    except ModelCardError as error:  # the server's callers catch ModelError, for the card as for the graphs
        raise ModelError(str(error)) from None


@dataclass(frozen=True)
class EngineOutput:
    rgb: np.ndarray  # B×3×H×W float32
    alpha: np.ndarray  # B×1×H×W float32


@dataclass
class EngineCounters:
    runs: int = 0
    frames: int = 0
    infer_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "runs": self.runs,
            "frames": self.frames,
            "mean_batch": self.frames / self.runs if self.runs else 0.0,
            "mean_infer_ms": 1000.0 * self.infer_seconds / self.runs if self.runs else 0.0,
        }


def choose_providers(requested: Sequence[str] | None, *, available: Sequence[str] | None = None) -> list[str]:
    """The providers to open graphs with: ``requested`` as given, or the best of PREFERRED_PROVIDERS that this
    onnxruntime offers (``available``: ort.get_available_providers() unless given). ModelError when one is missing."""
    available = list(ort.get_available_providers() if available is None else available)
    wanted = list(requested) if requested else [p for p in PREFERRED_PROVIDERS if p in available]
    missing = [p for p in wanted if p not in available]
    if missing:
        gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(missing)
        hint = " (the GPU providers come with onnxruntime-gpu: make install-gpu)" if gpu else ""
        raise ModelError(f"execution providers {missing} are not available{hint}; this onnxruntime offers {', '.join(available)}")
    return wanted


# `--provider` of bench: a short name -> the providers tried, best first. ONNX Runtime runs any node the GPU provider
# has no kernel for on the CPU provider, so the CPU stays last in every list.
PROVIDER_CHOICES = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


def providers_for(choice: str, *, available: Sequence[str] | None = None) -> list[str]:
    """The providers of a PROVIDER_CHOICES name, checked against this onnxruntime's; ModelError (one line) when the
    name is unknown or its first provider is not installed."""
    if choice not in PROVIDER_CHOICES:
        raise ModelError(f"unknown provider {choice!r}: choose one of {', '.join(PROVIDER_CHOICES)}")
    return choose_providers(PROVIDER_CHOICES[choice], available=available)


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def io_binding_device(providers: Sequence[str]) -> str | None:
    """The device a session on ``providers`` (as it started, best first) is fed through IO binding on: "cuda" when a
    GPU provider leads, else None (on the CPU plain run() copies nothing that binding would save)."""
    return "cuda" if providers and providers[0] in GPU_PROVIDERS else None


class IoBoundSession:
    """An ONNX Runtime session fed through IO binding: each input is copied into a buffer on ``device`` that is kept
    per (name, shape, dtype) and reused by later calls of that shape, the outputs are allocated by ONNX Runtime on
    the device and copied to the host once per call. Offers the part of InferenceSession that the engine uses."""

    def __init__(self, *, session: ort.InferenceSession, device: str, device_id: int = 0) -> None:
        self.session = session
        self.device = device
        self.device_id = device_id
        self._buffers: dict[tuple[str, tuple[int, ...], str], ort.OrtValue] = {}

    @property
    def input_buffers(self) -> dict[tuple[str, tuple[int, ...], str], ort.OrtValue]:
        """The device buffers kept so far, by (input name, shape, dtype)."""
        return dict(self._buffers)

    def get_inputs(self) -> list[ort.NodeArg]:
        return self.session.get_inputs()

    def get_outputs(self) -> list[ort.NodeArg]:
        return self.session.get_outputs()

    def get_providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, array in feed.items():
            array = np.ascontiguousarray(array)
            key = (name, array.shape, array.dtype.str)
            buffer = self._buffers.get(key)
            if buffer is None:
                buffer = self._buffers[key] = ort.OrtValue.ortvalue_from_numpy(array, self.device, self.device_id)
            else:
                buffer.update_inplace(array)  # host -> device into the kept buffer: no allocation per frame
            binding.bind_ortvalue_input(name, buffer)
        for name in output_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def enroll_unavailable(engine: Engine) -> str:
    """Why ``engine`` cannot enroll (for `hello` and refusals); "" when it can."""
    if engine.card.enrollment is None:
        return f"{engine.card.name} is a contract v1 model (avatar index input, no identity embedder)"
    if engine.bank_path is None:
        return "the server was started without an avatar bank file to keep enrolled avatars in"
    return ""


def best_batch(frames_per_second: dict[int, float], *, tolerance: float = 0.05) -> int:
    """The smallest batch whose frames/s is within ``tolerance`` of the best. More sessions than the batch cost no
    throughput (the worker claims every waiting frame and runs them in turns, none superseded), so a larger batch is
    worth taking only where it is faster per frame by more than the start-up measurement's noise; one that merely ties
    adds latency, and a tie in a short start-up measurement is often a loss over a longer run (README, "512 px")."""
    if not frames_per_second:
        raise ValueError("no batch sizes were measured")
    best = max(frames_per_second.values())
    return min(batch for batch, rate in frames_per_second.items() if rate >= (1 - tolerance) * best)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class LaneLayout:
    lanes: int  # copies of the graphs a batch is split across; 1: none (every batch on the one session)
    threads_per_lane: int  # intra-op threads of each lane's sessions


def lane_layout(*, requested: int | None, cores: int, max_batch: int) -> LaneLayout:
    """How many lanes and threads each: ``requested`` (None: one per core) capped by the batch (a chunk never holds more
    than max_batch frames) and by the cores (a lane has at least one thread); the cores shared out evenly."""
    if requested is not None and requested < 1:
        raise ValueError(f"lanes must be 1 or more, got {requested}")
    lanes = max(1, min(cores, max_batch, cores if requested is None else requested))
    return LaneLayout(lanes=lanes, threads_per_lane=max(1, cores // lanes))


def batch_candidates(limit: int) -> tuple[int, ...]:
    """The batch sizes a server measures up to ``limit``: powers of two, and the limit itself."""
    return tuple(sorted({*(2**k for k in range(limit.bit_length()) if 2**k <= limit), limit}))


class Engine:
    """One ONNX Runtime session for one avatar model; thread-compatible (one caller at a time)."""

    def __init__(
        self,
        *,
        model_path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        max_batch: int = 8,
        warmup: bool = True,
        bank_path: str | Path | None = None,
        io_binding: bool | None = None,
        spin_wait: bool = False,
        lanes: int | None = None,
    ) -> None:
        """``lanes``: copies of the graphs a batch of two or more frames is split across (module docstring); None: one
        per core, as many as ``max_batch`` allows; 1: off. In-process CPU sessions only (a GPU runs a batch whole).
        ``io_binding``: feed the graphs through IO binding (IoBoundSession); None: when a GPU provider leads.
        ``spin_wait``: ONNX Runtime's threads busy-wait between operators (its default). Off here: beside the server's
        other threads and a client on the same cores, the spinning threads take the CPU the others need (on the 2-core
        box a 512 px student served 27.5 frames/s without spinning against 16.6 with it, another job running; README)."""
        self.card = load_model_card(model_path)
        self.bank_path = Path(bank_path) if bank_path is not None else None  # where enrolled avatars are kept (v2)
        self.bank_problem: str | None = None  # why the user bank was not read, when it was not
        self._shipped, self._enrolled = self._read_banks()
        self._identity = self._joined_identity()  # v2: every avatar's tensor in id order, swapped whole by enroll
        self.max_batch = max_batch
        self._requested_providers = None if providers is None else list(providers)
        self._intra_op_threads = intra_op_threads
        self._io_binding = io_binding
        self._spin_wait = spin_wait
        # The graphs: objects with InferenceSession's get_inputs, get_outputs, get_providers and run (a subclass may
        # run them elsewhere: server/triton_engine.py).
        self.session, signal_sessions, self._embedder = self._open_graphs()
        self._check_contract()
        self._signal_graphs = {adapter.kind: (signal_sessions[adapter.kind], adapter) for adapter in self.card.adapters}
        self._check_signal_graphs()
        self.lane_layout = self._lane_layout(lanes)
        self._lanes = self._open_lanes(self.lane_layout)  # (main graph, kind -> its capture graph) per lane
        # Lane 0 runs in the caller's thread; the others on these (idle threads cost nothing).
        self._lane_threads = (
            ThreadPoolExecutor(max_workers=len(self._lanes) - 1, thread_name_prefix="megalive-lane") if len(self._lanes) > 1 else None
        )
        landmark_input = self.card.landmark_input
        # A landmark-driven model's avatars' neutral faces (N×68×2 in [0, 1]), for retargeting; read-only, shared.
        self._neutral = None if landmark_input is None else np.array(landmark_input.neutral_landmarks, np.float32)
        if self._neutral is not None:
            self._neutral.flags.writeable = False
        self.counters = EngineCounters()
        if warmup:
            self.warm_up()

    def _open_graphs(self) -> tuple[Any, dict[str, Any], Any | None]:
        """(main graph, capture kind -> its graph, embedder graph or None), as ONNX Runtime sessions in this process."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads  # 0: ORT picks (all physical cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spin_wait else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        requested = self._requested_providers
        chosen = choose_providers(requested)
        # A GPU provider that fails to start (missing CUDA libraries, say) falls back to the CPU,
        # unless the user named the providers.
        attempts = [chosen] if requested is not None or chosen == ["CPUExecutionProvider"] else [chosen, ["CPUExecutionProvider"]]
        if chosen[0] in GPU_PROVIDERS:
            # The CUDA and cuDNN libraries of the `gpu` extra are wheels (nvidia-*), not on the loader's path: ONNX
            # Runtime's own preloader finds them there (and falls back to the system's when they are absent).
            ort.preload_dlls()
        main = self._open_graph(self.card.model_path, options, attempts)
        started = main.get_providers()
        if requested and started[0] != chosen[0]:
            # ONNX Runtime falls back to the next provider with a warning when one cannot start (no driver, no CUDA
            # libraries); a provider the user named must run, or the figures would be the CPU's under its name.
            raise ModelError(f"{chosen[0]} is installed but did not start (ONNX Runtime fell back to {', '.join(started)})")
        # The other graphs on the providers the main graph started with.
        signals = {adapter.kind: self._open_graph(adapter.model_path, options, [started]) for adapter in self.card.adapters}
        enrollment = self.card.enrollment
        embedder = None if enrollment is None else self._open_graph(enrollment.embedder_path, options, [started])
        device = io_binding_device(started)
        if self._io_binding is not None:  # asked for (on the CPU too: the same code path, testable without a GPU) or refused
            device = (device or "cpu") if self._io_binding else None
        if device is None:
            return main, signals, embedder
        bound = {kind: IoBoundSession(session=session, device=device) for kind, session in signals.items()}
        return (
            IoBoundSession(session=main, device=device),
            bound,
            None if embedder is None else IoBoundSession(session=embedder, device=device),
        )

    def _lane_layout(self, requested: int | None) -> LaneLayout:
        """Lanes for in-process ONNX Runtime sessions on the CPU provider alone; one lane (none) for anything else."""
        on_cpu = isinstance(self.session, ort.InferenceSession) and self.session.get_providers() == ["CPUExecutionProvider"]
        if not on_cpu:
            return LaneLayout(lanes=1, threads_per_lane=self._intra_op_threads)
        cores = self._intra_op_threads or usable_cores()
        return lane_layout(requested=requested, cores=cores, max_batch=self.max_batch)

    def _open_lanes(self, layout: LaneLayout) -> list[tuple[Any, dict[str, Any]]]:
        """The lanes' own sessions of the main and capture graphs (none for one lane)."""
        if layout.lanes < 2:
            return []
        options = ort.SessionOptions()
        options.intra_op_num_threads = layout.threads_per_lane
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spin_wait else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        started = [self.session.get_providers()]
        return [
            (
                self._open_graph(self.card.model_path, options, started),
                {kind: self._open_graph(adapter.model_path, options, started) for kind, (_, adapter) in self._signal_graphs.items()},
            )
            for _ in range(layout.lanes)
        ]

    @staticmethod
    def _open_graph(path: Path, options: ort.SessionOptions, attempts: list[list[str]]) -> ort.InferenceSession:
        failure = ""
        for attempt in attempts:
            try:
                return ort.InferenceSession(str(path), sess_options=options, providers=attempt)
            except Exception as error:  # ORT raises its own exception types from C++; re-raised as one line
                failure = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"cannot load {path}: {failure}")

    def _read_banks(self) -> tuple[AvatarBank | None, AvatarBank | None]:
        """(shipped, enrolled) banks of a v2 model; (None, None) for v1."""
        enrollment = self.card.enrollment
        if enrollment is None:
            return None, None
        try:
            shipped = read_bank(enrollment.bank_path)
        except AvatarBankError as error:
            raise ModelError(str(error)) from None
        if shipped.identity_shape != enrollment.identity_shape:
            raise ModelError(
                f"{enrollment.bank_path}: identity tensors {shipped.identity_shape}, the model takes {enrollment.identity_shape}"
            )
        empty = AvatarBank(
            identity=np.zeros((0, *shipped.identity_shape), np.float32),
            thumbnails=np.zeros((0, *shipped.thumbnails.shape[1:]), np.uint8),
            records=(),
        )
        if self.bank_path is None or not self.bank_path.exists():
            return shipped, empty
        try:
            enrolled = read_bank(self.bank_path)
            if enrolled.identity_shape != shipped.identity_shape or enrolled.thumbnails.shape[1:] != shipped.thumbnails.shape[1:]:
                raise AvatarBankError(f"{self.bank_path}: its avatars were enrolled for another model ({enrolled.identity_shape})")
            clash = set(enrolled.names) & set(shipped.names)
            if clash:
                raise AvatarBankError(f"{self.bank_path}: names {sorted(clash)} are the model's own avatars'")
        except AvatarBankError as error:
            self.bank_problem = f"{error}; serving the model's own avatars only"
            return shipped, empty
        return shipped, enrolled

    def _joined_identity(self) -> np.ndarray | None:
        if self._shipped is None or self._enrolled is None:
            return None
        return np.concatenate([self._shipped.identity, self._enrolled.identity])

    @property
    def contract(self) -> int:
        return self.card.contract

    @property
    def avatar_names(self) -> tuple[str, ...]:
        """Every avatar's name, in id order: a v2 model's shipped then enrolled ones; a v1 model's card."""
        if self._shipped is None or self._enrolled is None:
            return self.card.avatar_names
        return self._shipped.names + self._enrolled.names

    @property
    def num_avatars(self) -> int:
        return len(self.avatar_names)

    @property
    def thumbnail_size(self) -> tuple[int, int]:
        """(height, width) of a v2 model's bank thumbnails, which enrolled avatars' match."""
        if self._shipped is None:
            raise ModelError(f"{self.card.name} has no avatar bank (a contract v1 model)")
        height, width = self._shipped.thumbnails.shape[1:3]
        return int(height), int(width)

    @property
    def can_enroll(self) -> bool:
        return self._embedder is not None and self.bank_path is not None

    @property
    def drivers(self) -> tuple[str, ...]:
        return self.card.drivers

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def family(self) -> str:
        """What the card says the model is: "student", "personal" (landmark-driven few-shot) or "teacher"."""
        return self.card.family

    @property
    def teacher(self) -> bool:
        """True for a MegaPortraits teacher served directly: one-shot, driven by pictures only."""
        return self.card.teacher is not None

    @property
    def landmark_driven(self) -> bool:
        """True when the main graph's driver is a landmark image drawn from 68 points (see the module docstring)."""
        return self.card.landmark_input is not None

    @property
    def neutral_landmarks(self) -> np.ndarray | None:
        """A landmark-driven model's neutral face per avatar, N×68×2 float32 in [0, 1] (read-only); None otherwise."""
        return self._neutral

    @property
    def resolution(self) -> tuple[int, int]:
        return self.card.resolution

    def _check_contract(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        who = "avatar" if self.card.enrollment is None else "identity"
        if "driver" not in inputs or who not in inputs or not {"rgb", "alpha"} <= outputs:
            raise ModelError(
                f"{self.card.model_path.name} does not follow the avatar contract v{self.card.contract}: inputs {sorted(inputs)}, "
                f"outputs {sorted(outputs)} (need inputs driver, {who} and outputs rgb, alpha)"
            )
        shape = inputs["driver"].shape  # [B, 3, H, W]; B symbolic
        if len(shape) != 4 or (isinstance(shape[2], int) and tuple(shape[2:]) != self.card.resolution):
            raise ModelError(f"driver input shape {shape} disagrees with the sidecar resolution {self.card.resolution}")
        height, width = self.card.resolution
        if self.card.landmark_input is not None and height != width:
            raise ModelError(f"{self.card.model_path.name} is landmark-driven but {height}×{width}: landmark images are square")

    def _check_signal_graphs(self) -> None:
        """Each capture graph gives what its card entry says: pictures (rgb, alpha), or, on a landmark-driven model only,
        the 68 points the engine draws (landmarks)."""
        for kind, (session, adapter) in self._signal_graphs.items():
            outputs = {o.name for o in session.get_outputs()}
            if adapter.outputs not in (("rgb", "alpha"), ("landmarks",)) or not set(adapter.outputs) <= outputs:
                raise ModelError(
                    f"the {kind} graph {adapter.model_path.name} gives {sorted(outputs)}, its card entry says {list(adapter.outputs)} "
                    "(need rgb, alpha or landmarks)"
                )
            if adapter.outputs == ("landmarks",) and self.card.landmark_input is None:
                raise ModelError(f"the {kind} graph {adapter.model_path.name} gives landmarks, but the model is not landmark-driven")
            if kind == "landmarks" and self.card.landmark_input is not None:
                raise ModelError(f"{self.card.model_path.name} is landmark-driven: it draws landmarks itself and takes no landmarks graph")

    def _probe(self, batch: int) -> tuple[np.ndarray, np.ndarray, str]:
        """A batch of the main path's input (driver, avatars, kind) that any model takes."""
        avatars = np.zeros(batch, np.int64)
        if self._neutral is not None:  # the drawing and the main graph, on the first avatar's own neutral face
            return np.repeat(self._neutral[:1], batch, axis=0), avatars, "landmarks"
        return np.zeros((batch, 3, *self.resolution), np.float32), avatars, "image"

    def warm_up(self) -> None:
        """Run every graph once at batch 1 and at max batch so the first real frames do not pay allocation costs."""
        for batch in sorted({1, self.max_batch}):
            driver, avatars, kind = self._probe(batch)
            self.run(driver, avatars, kind=kind)
            for kind, (_, adapter) in self._signal_graphs.items():
                self.run(np.full((batch, *adapter.input_shape), 0.5, np.float32), avatars, kind=kind)
        self.counters = EngineCounters()

    def frames_per_second_by_batch(self, batches: Sequence[int], *, seconds: float, rounds: int = 3) -> dict[int, float]:
        """Frames/s of the main path at each batch size: each batch runs seconds / (rounds · len(batches)) per round,
        the batches taking turns, so that the machine's drift falls on all of them alike; the median over the rounds."""
        turn_s = seconds / (rounds * len(batches))
        measured: dict[int, list[float]] = {batch: [] for batch in batches}
        for _ in range(rounds):
            for batch in batches:
                driver, avatars, kind = self._probe(batch)
                self.run(driver, avatars, kind=kind)  # this size's buffers allocated outside the timing
                frames, began = 0, time.perf_counter()
                while time.perf_counter() - began < turn_s:
                    self.run(driver, avatars, kind=kind)
                    frames += batch
                measured[batch].append(frames / (time.perf_counter() - began))
        self.counters = EngineCounters()
        return {batch: float(np.median(values)) for batch, values in measured.items()}

    def run(self, driver: np.ndarray, avatar: np.ndarray, *, kind: str = "image") -> EngineOutput:
        """driver: B×3×H×W float32 in [0,1] (kind image), or the capture signal B×… of the kind's graph, or (a
        landmark-driven model's kind landmarks) B×68×2 points in [0, 1] over the crop; avatar: B int64
        -> rgb B×3×H×W, alpha B×1×H×W. ValueError for a kind the model lacks or shapes that do not fit."""
        _, sample_shape = self._pipeline(kind)
        if driver.shape[1:] != sample_shape or avatar.shape != driver.shape[:1]:
            raise ValueError(f"engine input shapes {driver.shape} / {avatar.shape} do not match {kind} input {sample_shape}")
        identity = self._identity  # one reference for the whole call: enroll swaps the array, never edits it
        if identity is not None:  # v2: the avatars' identity tensors, looked up by id
            if avatar.size and (avatar.min() < 0 or avatar.max() >= len(identity)):
                raise ValueError(f"avatar ids {avatar.tolist()} outside the {len(identity)} avatars")
            who, values = "identity", identity[avatar]
        else:
            who, values = "avatar", avatar
        rgbs, alphas = [], []
        for start in range(0, len(driver), self.max_batch):
            chunk = slice(start, start + self.max_batch)
            began = time.perf_counter()  # the whole path of the chunk: capture graph, drawing and main graph
            rgb, alpha = self._run_chunk(kind, driver[chunk], who, values[chunk])
            self.counters.infer_seconds += time.perf_counter() - began
            self.counters.runs += 1
            self.counters.frames += len(rgb)
            rgbs.append(rgb)
            alphas.append(alpha)
        if len(rgbs) == 1:
            return EngineOutput(rgb=rgbs[0], alpha=alphas[0])
        return EngineOutput(rgb=np.concatenate(rgbs), alpha=np.concatenate(alphas))

    def _run_chunk(self, kind: str, driver: np.ndarray, who: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One chunk (at most max_batch frames) -> (rgb, alpha): on the session with all the threads, or split across
        the lanes in its order, lane 0 in this thread; every lane has finished when this returns or raises."""
        parts = min(len(self._lanes), len(driver))
        if parts < 2:
            rgb, alpha = self._pipeline(kind)[0](driver, {who: values})
            return rgb, alpha
        bounds = np.linspace(0, len(driver), parts + 1).round().astype(int)  # as even as the chunk allows
        pieces = [slice(bounds[i], bounds[i + 1]) for i in range(parts)]
        assert self._lane_threads is not None
        pending: list[Future[list[np.ndarray]]] = [
            self._lane_threads.submit(self._pipeline(kind, lane=i)[0], driver[piece], {who: values[piece]})
            for i, piece in enumerate(pieces[1:], start=1)
        ]
        try:
            results = [self._pipeline(kind, lane=0)[0](driver[pieces[0]], {who: values[pieces[0]]})]
        finally:
            for future in pending:  # wait for each (even when lane 0 failed): a lane must be free for the next chunk
                future.exception()
        results += [future.result() for future in pending]
        return np.concatenate([rgb for rgb, _ in results]), np.concatenate([alpha for _, alpha in results])

    def _pipeline(
        self, kind: str, *, lane: int | None = None
    ) -> tuple[Callable[[np.ndarray, dict[str, np.ndarray]], list[np.ndarray]], tuple[int, ...]]:
        """What one chunk of driver ``kind`` goes through (chunk, avatar feed -> [rgb, alpha]), and its sample shape;
        on lane ``lane``'s sessions, or (None) on the session with all the threads."""
        landmark_driven = self.card.landmark_input is not None
        main_session, signal_sessions = (
            (self.session, {name: session for name, (session, _) in self._signal_graphs.items()}) if lane is None else self._lanes[lane]
        )

        def main_graph(images: np.ndarray, who: dict[str, np.ndarray]) -> list[np.ndarray]:
            return main_session.run(["rgb", "alpha"], {"driver": images, **who})

        def drawn(points: np.ndarray, who: dict[str, np.ndarray]) -> list[np.ndarray]:
            return main_graph(self.draw_landmarks(points), who)

        if kind == "image" and not landmark_driven:
            return main_graph, (3, *self.resolution)
        if kind == "landmarks" and landmark_driven:
            return drawn, (NUM_LANDMARKS, 2)
        if kind in self._signal_graphs:
            session, adapter = signal_sessions[kind], self._signal_graphs[kind][1]

            def capture_graph(signal: np.ndarray, who: dict[str, np.ndarray]) -> list[np.ndarray]:
                if adapter.outputs == ("landmarks",):  # the graph gives points; they are drawn as a landmarks frame's are
                    (points,) = session.run(["landmarks"], {adapter.input_name: signal, **who})
                    return drawn(points, who)
                return session.run(["rgb", "alpha"], {adapter.input_name: signal, **who})

            return capture_graph, adapter.input_shape
        if kind == "image":
            raise ValueError(f"{self.card.name} is driven by landmarks: a camera picture is not its driver (run kind 'landmarks')")
        raise ValueError(f"this model has no {kind!r} driver (it has {list(self.card.drivers)})")

    def draw_landmarks(self, points: np.ndarray) -> np.ndarray:
        """A landmark-driven model's driver input: B×68×2 points in [0, 1] over the crop -> B×3×H×W float32 landmark
        images, each drawn by contract/landmark_image.py at the card's line thickness. ValueError for non-finite points."""
        landmark_input = self.card.landmark_input
        if landmark_input is None:
            raise ValueError(f"{self.card.name} is not landmark-driven: its driver is a picture")
        return draw_landmark_images(points, size=self.resolution[0], thickness=landmark_input.line_thickness)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """K aligned portrait crops of one person, K×3×H×W float32 in [0, 1] -> their identity tensor C_id×S×S (a teacher:
        the first crop's encoded state)."""
        if self._embedder is None or self.card.enrollment is None:
            raise ModelError(f"{self.card.name} cannot enroll avatars: it is a contract v1 model (avatar index input)")
        if frames.ndim != 4 or frames.shape[1:] != (3, *self.resolution):
            raise ValueError(f"portrait frames must be K×3×{self.resolution[0]}×{self.resolution[1]}, got {frames.shape}")
        if self.card.teacher is not None:
            frames = frames[:1]  # the teacher is one-shot: its embedder encodes the first portrait only
        (identity,) = self._embedder.run(["identity"], {"frames": frames[None].astype(np.float32)})  # 1×K×3×H×W -> 1×C×S×S
        return identity[0]

    def enroll(self, *, identity: np.ndarray, thumbnail: np.ndarray, record: AvatarRecord) -> int:
        """Append an avatar to the user bank (on disk first: a temporary file renamed over it) and to this engine;
        returns its id. AvatarBankError (one line) for a name in use or a wrong shape; the bank is then untouched."""
        if self._shipped is None or self._enrolled is None or self.bank_path is None:
            raise ModelError(f"{self.card.name} cannot enroll avatars (a contract v1 model, or no avatar bank file was given)")
        check_name(record.name, taken=self.avatar_names)
        grown = self._enrolled.with_avatar(identity=identity, thumbnail=thumbnail, record=record)
        write_bank(grown, self.bank_path)
        self._enrolled = grown
        self._identity = self._joined_identity()
        return self.num_avatars - 1

    def replace_identity(self, avatar: int, *, identity: np.ndarray, provenance: dict[str, object]) -> None:
        """Give an enrolled avatar a new identity tensor and provenance (its refinement), in the bank file first (written,
        then renamed) and then here. AvatarBankError for a shipped avatar or a wrong shape; the bank is then untouched."""
        if self._shipped is None or self._enrolled is None or self.bank_path is None:
            raise ModelError(f"{self.card.name} has no enrolled avatars")
        shipped = len(self._shipped.records)
        if avatar < shipped:
            raise AvatarBankError(f"avatar {avatar} is one of the model's own: only enrolled avatars are refined")
        changed = self._enrolled.with_identity(avatar - shipped, identity=identity, provenance=provenance)
        write_bank(changed, self.bank_path)
        self._enrolled = changed
        self._identity = self._joined_identity()

    def avatar_records(self) -> tuple[AvatarRecord, ...]:
        """Every avatar's bank record in id order (a v1 model has none)."""
        if self._shipped is None or self._enrolled is None:
            return ()
        return self._shipped.records + self._enrolled.records

    def thumbnails(self) -> list[np.ndarray | None]:
        """Per-avatar thumbnails (h×w×3 uint8): a v2 model's banks', a v1 model's sidecar .npy file; None each when absent."""
        if self._shipped is not None and self._enrolled is not None:
            return list(self._shipped.thumbnails) + list(self._enrolled.thumbnails)
        path = self.card.thumbnails_path
        if path is None or not path.is_file():
            return [None] * self.card.num_avatars
        stack = np.load(path, allow_pickle=False)  # N×h×w×3 uint8
        if stack.dtype != np.uint8 or stack.ndim != 4 or len(stack) != self.card.num_avatars:
            raise ModelError(f"{path}: thumbnails must be N×h×w×3 uint8 for {self.card.num_avatars} avatars")
        return list(stack)
