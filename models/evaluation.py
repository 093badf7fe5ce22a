"""`megalive-train eval`: the reenactment benchmark, against the renderer's ground truth.

One command for both models, so that teacher and student sit side by side:
    student  an exported .onnx (with sidecar), locked to its avatars: the sources are its training
             dataset's avatars (``--data``), driven by an image, ARKit curves or 68 landmarks
    teacher  a `megalive-train base` checkpoint, one-shot: the sources are the same avatars when
             ``--data`` is given, else identities drawn from the held-out seed; driven by an image

The source image of every avatar is its neutral frame (frontal, no expression). Held-out drivers:
identities and motions (smooth clips or independent random poses) drawn from seeds no training
stream uses, rendered now. Per pair, two reenactments:
    cross  driven by a new driver identity's frame
    self   driven by the avatar itself in that motion (the driver frame is the target)
both with one target: the avatar in the driver's motion, rendered.

Each output is scored beside the baselines measured in the same run: "source copy" (the source image:
right identity, no motion) and, for cross-reenactment, "driver copy" (the driver frame: right motion,
wrong identity; for self-reenactment it is the target itself, so it has no row). Figures:
    PSNR / SSIM          full frame (only for models that draw the background: the student)
    foreground PSNR/SSIM every image composited on white by its own mask (the teacher is trained on
                         the foreground only, so this is the figure to compare the two on)
    eye / mouth PSNR     PSNR inside the eye and the mouth box (models/face_regions.py) of the target's
                         landmarks, on the foreground images. Full-frame PSNR scores a face without eyes or mouth
                         well above the source copy (they are a few percent of the frame); in the boxes its lead is
                         gone (about the source copy's figure), and the eye / mouth perceptual distances and CSIM-dlib
                         rank it clearly below (tests/models/test_eval_blank_face.py)
    perceptual distance (EfficientNet-Lite0)
                         models/nets/perceptual.py's distance of output and target (0: the same image)
    eye / mouth perceptual distance (EfficientNet-Lite0)
                         the same distance between the eye boxes (and the mouth boxes) of output and target, each
                         cut out and resized to REGION_CROP px: a box without its eye or mouth is far from one with it,
                         where PSNR finds a flat box about as close as a misplaced eye
    CSIM-dlib            cosine of dlib face descriptors (models/nets/face_descriptor.py): output against the
                         target, both chips aligned by the target's landmarks, and output against the source
                         image, its chip aligned by the source's own landmarks (1: the same face)
    FD-EffNet            Fréchet distance between the EfficientNet-Lite0 pooled features of all the outputs
                         and those of all the targets (one figure per row, over the whole set)
    motion, identity     with ``--regressor`` (models/nets/parameter_regressor.py): the predicted pose's
                         rotation error in degrees and the mean ARKit control error against the driver's
                         true motion, and the identity error (in prior standard deviations) against the
                         avatar's true identity; its error on the ground truth itself (the floor) beside, and
                         the ARKit error of answering zero for every control (the figure to beat). It places its
                         eye and mouth crops by its own landmarks on each image
The perceptual, CSIM and FD figures read the foreground images (as fg PSNR, so teacher and student compare),
resized to ``EvalConfig.metric_size`` for EfficientNet-Lite0 (so models of different resolutions compare). Their
networks load from pinned local files (models/nets/weights.py): a network whose files are missing or wrong
leaves its figures absent (None), and the report's ``networks`` says why; nothing stands in for it.

Writes eval-<motions>[-<driver>].json and contact-sheet-<motions>[-<driver>].png (per row: source, driver,
cross output, target, self output; outputs and target on white for the teacher).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import Tensor, nn
from tqdm import tqdm

from contract.avatar_bank import read_bank
from contract.landmark_image import draw_landmark_images, retarget_landmarks
from contract.model_card import read_model_card
from models.blocks import on_white
from models.data.heads import (
    HeadMotion,
    HeadRender,
    Identity,
    SyntheticHeads,
    contact_sheet,
    neutral_motion,
    sample_clip,
    sample_identities,
    sample_motions,
)
from models.data.paired import load_identities, read_meta, save_png
from models.face_regions import REGION_NAMES, region_crops, region_masks
from models.nets.face_descriptor import FaceDescriptor, align_face_chips
from models.nets.parameter_regressor import ParameterRegressor, load_regressor, parameter_errors, zero_answer_error
from models.nets.perceptual import PerceptualFeatures, output_distance
from models.nets.weights import FACE_NETWORK, PERCEPTUAL_NETWORK, NetWeightsError, network_problem

HELD_OUT_SEED = 424242  # never used by `synth` (streams seed*1000 + {1, 2, 3}) nor by the teacher's SyntheticPairs (hashed seeds)

MOTION_SETS = ("clips", "random")
DRIVER_KINDS = ("image", "arkit", "landmarks")


@dataclass(frozen=True)
class EvalConfig:
    model: str  # an exported student .onnx, or a base-model (teacher) checkpoint .pt
    data: str | None = None  # the student's training dataset (its avatars); optional for the teacher
    regressor: str | None = None  # a `megalive-train regressor` checkpoint: motion and identity errors
    clips: int = 8
    frames_per_clip: int = 25
    seed: int = HELD_OUT_SEED
    batch_size: int = 8
    motions: str = "clips"  # clips: smooth performances (sample_clip); random: independent poses and expressions (sample_motions)
    driver: str = "image"  # image: the driver's render; arkit: its exact motion as curves; landmarks: its 68 landmarks
    centred: bool = False  # the motions drawn centred at the default size (always so for arkit: curves carry no framing)
    sources: int = 8  # held-out source identities when there is no --data (a teacher, or a student enrolling them)
    enroll_shots: int = 0  # K > 0: a contract-v2 student enrolls every source from K frames (its embedder), not its own avatars
    refine_steps: int = 0  # with enroll_shots: each enrolled identity tensor is then refined on its K frames (few-shot)
    metric_size: int = 224  # side images are resized to for EfficientNet-Lite0 (its training size); 0: as they are
    retarget: bool = False  # landmarks driver: the driver's displacement from its neutral, on the avatar's neutral landmarks

    @property
    def is_centred(self) -> bool:
        return self.centred or self.driver == "arkit"

    @property
    def name(self) -> str:
        """eval-<motions>[-centred][-<driver>]: the file stem of this evaluation's report and contact sheet (arkit's
        rows are always centred, and their name does not say it)."""
        centred = "-centred" if self.centred and self.driver != "arkit" else ""
        enrolled = f"-enrolled-k{self.enroll_shots}" if self.enroll_shots else ""
        enrolled += f"-refined{self.refine_steps}" if self.enroll_shots and self.refine_steps else ""
        enrolled += "-retargeted" if self.retarget else ""
        stem = f"{self.motions}{centred}" if self.driver == "image" else f"{self.motions}{centred}-{self.driver}"
        return stem + enrolled


@dataclass(frozen=True)
class Figures:
    foreground_psnr: float
    foreground_ssim: float
    psnr: float | None = None  # full frame; None where the model does not draw the background
    ssim: float | None = None
    eye_psnr: float | None = None  # in the eye / mouth box of the target's landmarks, foreground on white
    mouth_psnr: float | None = None
    perceptual_distance: float | None = None  # perceptual distance (EfficientNet-Lite0) to the target; None: network absent
    eye_perceptual: float | None = None  # the same, between the eye (mouth) box crops of output and target
    mouth_perceptual: float | None = None
    csim_dlib_target: float | None = None  # CSIM-dlib against the target; None: network absent
    csim_dlib_source: float | None = None  # CSIM-dlib against the source image
    fd_effnet: float | None = None  # FD-EffNet of this row's images against the targets, over the whole set
    rotation_error_deg: float | None = None  # None without a regressor
    expression_error: float | None = None
    identity_error: float | None = None


@dataclass(frozen=True)
class CrossFigures:
    model_output: Figures
    source_copy: Figures
    driver_copy: Figures


@dataclass(frozen=True)
class SelfFigures:
    model_output: Figures
    source_copy: Figures  # the same as cross-reenactment's: both reenactments have the same target (driver copy is the target itself)


@dataclass(frozen=True)
class EvalReport:
    model: str
    model_kind: str  # student | teacher | fewshot
    motions: str
    driver: str
    pairs: int
    resolution: int
    sources: str  # what the avatars are
    cross: CrossFigures
    self_reenactment: SelfFigures
    ground_truth: Figures | None  # the regressor on the targets themselves: its floor (None without a regressor)
    regressor: str | None
    expression_zero_answer: float | None = None  # the ARKit error of answering 0 for every control (None without a regressor)
    networks: dict[str, str] = field(default_factory=dict)  # metric network -> "active" or "absent: <why>"
    notes: tuple[str, ...] = ()  # how to read figures whose meaning depends on this run (FD-EffNet's sample count)
    enrollment_seconds: dict[str, float] | None = None  # --enroll-shots: per avatar, embedding (and refinement): median, worst

    def rows(self) -> list[tuple[str, Figures]]:
        rows = [
            ("cross: model output", self.cross.model_output),
            ("cross: source copy", self.cross.source_copy),
            ("cross: driver copy", self.cross.driver_copy),
            ("self: model output", self.self_reenactment.model_output),
            ("self: source copy", self.self_reenactment.source_copy),
        ]
        return rows + ([("ground truth (regressor floor)", self.ground_truth)] if self.ground_truth is not None else [])

    def table(self) -> str:
        lines = [
            f"{self.model_kind} {self.model}: {self.pairs} held-out pairs ({self.motions} motions, new driver identities, "
            f"driven by {self.driver}) at {self.resolution}×{self.resolution}; sources: {self.sources}",
            f"  {'':<31} " + " ".join(f"{title:>{width}}" for _, title, width, _ in PRINTED_COLUMNS),
        ]
        for name, figures in self.rows():
            cells = [_number(getattr(figures, key), digits) for key, _, _, digits in PRINTED_COLUMNS]
            lines.append(f"  {name:<31} " + " ".join(f"{cell:>{width}}" for cell, (_, _, width, _) in zip(cells, PRINTED_COLUMNS)))
        lines.append(
            "  eye/mouth PSNR: in the target's eye and mouth boxes; perc.: perceptual distance (EfficientNet-Lite0) to the target, "
            "eye/mouth perc.: between the boxes' crops; CSIM tgt/src: CSIM-dlib against the target / the source image; "
            "FD-EffNet: against the targets, over the whole set"
        )
        for network, figures in (
            (PERCEPTUAL_NETWORK, NETWORK_FIGURES[PERCEPTUAL_NETWORK]),
            (FACE_NETWORK, NETWORK_FIGURES[FACE_NETWORK]),
        ):
            status = self.networks.get(network, "absent: not measured")
            if status != "active":
                lines.append(f"  {figures}: {status}")
        if self.regressor is None:
            lines.append("  motion and identity errors: absent (no --regressor given)")
        elif self.expression_zero_answer is not None:
            floor = self.ground_truth.expression_error if self.ground_truth is not None else None
            lines.append(
                f"  ARKit error of answering zero for every control on these motions: {self.expression_zero_answer:.4f} "
                f"(the regressor on the ground truth: {_number(floor, 4)})"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


# Each metric network's figures, in words.
NETWORK_FIGURES = {
    PERCEPTUAL_NETWORK: "perceptual distances (EfficientNet-Lite0: whole, eyes, mouth) and FD-EffNet",
    FACE_NETWORK: "CSIM-dlib",
}

# The printed table's columns: (Figures field, title, width, decimals).
PRINTED_COLUMNS = (
    ("psnr", "PSNR", 6, 2),
    ("ssim", "SSIM", 6, 4),
    ("foreground_psnr", "fg PSNR", 8, 2),
    ("foreground_ssim", "fg SSIM", 8, 4),
    ("eye_psnr", "eye PSNR", 8, 2),
    ("mouth_psnr", "mouth PSNR", 10, 2),
    ("perceptual_distance", "perc.", 6, 4),
    ("eye_perceptual", "eye perc.", 9, 4),
    ("mouth_perceptual", "mouth perc.", 11, 4),
    ("csim_dlib_target", "CSIM tgt", 8, 4),
    ("csim_dlib_source", "CSIM src", 8, 4),
    ("fd_effnet", "FD-EffNet", 9, 2),
    ("rotation_error_deg", "rot °", 6, 2),
    ("expression_error", "expr", 6, 4),
    ("identity_error", "id σ", 6, 3),
)


class AvatarOutput(NamedTuple):
    rgb: Tensor  # B×3×H×W
    alpha: Tensor  # B×1×H×W


class AvatarModel(Protocol):
    kind: str
    resolution: int
    draws_background: bool

    def set_sources(self, sources: Tensor) -> None:
        """The avatars' source images, A×3×H×W in [0, 1] (a student checks only their number)."""

    def enroll_sources(self, frames: Tensor, landmarks: Tensor, *, refine_steps: int) -> list[float]:
        """Make the avatars from A×K×3×H×W frames of each (a contract-v2 student's embedder), then refine each on its
        frames (landmarks A×K×68×2) for ``refine_steps``; returns the seconds each avatar took. Others refuse."""

    def __call__(self, signal: Tensor, avatar: Tensor) -> AvatarOutput:
        """signal: B×… driving input; avatar: B indices into the sources."""


class OnnxAvatarModel:
    """An exported student run with ONNX Runtime CPU (the artefact the server ships), through the graph
    of one driver kind: image (``driver``), arkit (``curves``) or landmarks. A contract-v2 student takes identity
    tensors: its bank's (its own avatars), or, after ``enroll_sources``, those its embedder makes of the sources."""

    kind = "student"
    draws_background = True

    def __init__(self, path: Path, *, driver: str = "image") -> None:
        import onnxruntime as ort

        card = read_model_card(path)  # checked, digests included; ModelCardError is a ValueError with a one-line message
        self.path = path
        self.resolution = card.resolution[0]
        self.avatar_names = card.avatar_names
        self.input_name, graph = "driver", path
        # A landmark-driven model (few-shot): its main graph reads landmark images, drawn here from the points (or from
        # the points its ARKit graph gives), as the server draws them.
        self.landmark_input, self.signal_session = card.landmark_input, None
        if self.landmark_input is not None and driver == "image":
            raise ValueError(f"{path} is driven by landmarks: evaluate it with --driver landmarks or arkit")
        if driver != "image" and not (self.landmark_input is not None and driver == "landmarks"):
            adapter = card.adapter(driver)
            if adapter is None:
                raise ValueError(f"{path} has no {driver!r} driver (it has {list(card.drivers)})")
            self.input_name, graph = adapter.input_name, adapter.model_path
            if self.landmark_input is not None:  # the adapter gives points; the main graph draws from them
                self.signal_session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
                graph = path
        self.session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        self.enrollment = card.enrollment
        # Contract v2: every avatar's identity tensor (the bank's, until enroll_sources replaces them).
        self.identity = None if card.enrollment is None else torch.from_numpy(read_bank(card.enrollment.bank_path).identity)

    def set_sources(self, sources: Tensor) -> None:
        if self.identity is not None and len(sources) == len(self.identity):
            return
        if len(sources) != len(self.avatar_names):
            raise ValueError(f"the model has {len(self.avatar_names)} avatars but the data has {len(sources)}")

    def enroll_sources(self, frames: Tensor, landmarks: Tensor, *, refine_steps: int) -> list[float]:
        import onnxruntime as ort

        if self.enrollment is None:
            raise ValueError(f"{self.path} cannot enroll: a contract v1 model (no identity embedder)")
        embedder = ort.InferenceSession(str(self.enrollment.embedder_path), providers=["CPUExecutionProvider"])
        seconds, identities = [], []
        for index in range(len(frames)):  # one at a time, as a user enrolls: each avatar's own time
            began = time.perf_counter()
            (identity,) = embedder.run(["identity"], {"frames": frames[index : index + 1].numpy()})  # 1×K×3×H×W -> 1×C_id×S×S
            identities.append(torch.from_numpy(identity[0]))
            seconds.append(time.perf_counter() - began)
        if refine_steps:
            identities, refine_seconds = self._refine(identities, frames, landmarks, steps=refine_steps)
            seconds = [a + b for a, b in zip(seconds, refine_seconds)]
        self.identity = torch.stack(identities)  # A×C_id×S×S
        return seconds

    def _refine(self, identities: list[Tensor], frames: Tensor, landmarks: Tensor, *, steps: int) -> tuple[list[Tensor], list[float]]:
        """Few-shot refinement of each identity tensor, as the server's job does it (models/training/refine_identity.py)."""
        from models.checkpoints import student_from_weights
        from models.nets.perceptual import PerceptualFeatures
        from models.nets.weights import PERCEPTUAL_NETWORK, network_problem
        from models.training.refine_identity import RefineConfig, refine_identity

        files = self.enrollment
        if files is None or files.weights_path is None or files.student_config is None:
            raise ValueError(f"{self.path} cannot refine: no student weights beside it (re-export it)")
        refined, seconds = [], []
        with torch.inference_mode(False), torch.enable_grad():  # the evaluation runs in inference mode; a fit needs autograd
            student = student_from_weights(files.weights_path, files.student_config)
            perceptual = PerceptualFeatures() if network_problem(PERCEPTUAL_NETWORK) is None else None
            for identity, own_frames, own_landmarks in zip(identities, frames, landmarks):
                began = time.perf_counter()
                result = refine_identity(
                    student,
                    identity=identity.clone(),
                    frames=own_frames.clone(),
                    landmarks=own_landmarks.clone(),
                    config=RefineConfig(steps=steps),
                    perceptual=perceptual,
                )
                refined.append(result.identity)
                seconds.append(time.perf_counter() - began)
        return refined, seconds

    def __call__(self, signal: Tensor, avatar: Tensor) -> AvatarOutput:
        who = {"avatar": avatar.numpy()} if self.identity is None else {"identity": self.identity[avatar].numpy()}
        if self.landmark_input is not None:
            points = signal.numpy()  # B×68×2 in [0, 1]
            if self.signal_session is not None:
                (points,) = self.signal_session.run(["landmarks"], {self.input_name: points, **who})
            drawn = draw_landmark_images(points, size=self.resolution, thickness=self.landmark_input.line_thickness)
            rgb, alpha = self.session.run(["rgb", "alpha"], {"driver": drawn, **who})
            return AvatarOutput(rgb=torch.from_numpy(rgb), alpha=torch.from_numpy(alpha))
        rgb, alpha = self.session.run(["rgb", "alpha"], {self.input_name: signal.numpy(), **who})
        return AvatarOutput(rgb=torch.from_numpy(rgb), alpha=torch.from_numpy(alpha))


class TeacherAvatarModel:
    """A base-model checkpoint in PyTorch (models/megaportraits/distill.py: each source encoded once,
    then driven by driver images)."""

    kind = "teacher"
    draws_background = False  # trained on the foreground only (train_base.py)

    def __init__(self, path: Path, *, driver: str = "image") -> None:
        from models.megaportraits.distill import TeacherAvatars

        if driver != "image":
            raise ValueError(f"the teacher is driven by images only, not {driver!r}")
        self.avatars = TeacherAvatars.from_checkpoint(path)
        self.resolution = self.avatars.resolution

    def set_sources(self, sources: Tensor) -> None:
        self.avatars.set_sources(sources)

    def enroll_sources(self, frames: Tensor, landmarks: Tensor, *, refine_steps: int) -> list[float]:
        raise ValueError("the teacher reads its source image as it is: --enroll-shots is for contract-v2 students")

    def __call__(self, signal: Tensor, avatar: Tensor) -> AvatarOutput:
        rgb, alpha = self.avatars(signal, avatar)
        return AvatarOutput(rgb=rgb, alpha=alpha)


def load_avatar_model(path: Path, *, driver: str) -> AvatarModel:
    """A student .onnx, a teacher checkpoint or a few-shot talking heads checkpoint (anything else: ValueError, one line)."""
    if path.suffix == ".onnx":
        return OnnxAvatarModel(path, driver=driver)
    if path.suffix in (".pt", ".pth"):
        from models.checkpoints import FEWSHOT_KIND, checkpoint_kind, load_checkpoint
        from models.fewshot.avatar_model import FewShotAvatarModel
        from models.training.common import TrainingError

        try:
            if checkpoint_kind(load_checkpoint(path)) == FEWSHOT_KIND:
                return FewShotAvatarModel(path, driver=driver)
            return TeacherAvatarModel(path, driver=driver)
        except TrainingError as error:
            raise ValueError(str(error)) from None
    raise ValueError(f"{path}: expected an exported student (.onnx) or a base-model checkpoint (.pt)")


def _psnr(a: Tensor, b: Tensor) -> Tensor:
    mse = (a - b).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)  # per image, data range 1


def region_psnr(guess: Tensor, truth: Tensor, landmarks: Tensor) -> Tensor:
    """PSNR (dB, data range 1; 100 for identical pixels) inside each REGION_NAMES box of the truth's landmarks.
    guess, truth: B×3×S×S; landmarks: B×68×2 in pixels (pixel i spans [i, i+1)) -> B×R."""
    masks = region_masks(landmarks, size=truth.shape[-1]).to(truth)  # B×R×S×S
    squared = (guess - truth).square().mean(dim=1)  # B×S×S, over the channels
    mse = (masks * squared.unsqueeze(1)).sum(dim=(2, 3)) / masks.sum(dim=(2, 3))  # B×R
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def frechet_distance(first: Tensor, second: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (N×D and M×D, N, M ≥ 2):
    |μ₁ - μ₂|² + tr Σ₁ + tr Σ₂ - 2 tr (Σ₁Σ₂)^½, with unbiased covariances (N - 1).

    tr (Σ₁Σ₂)^½ is the sum of the singular values of A Bᵀ / √((N-1)(M-1)) for the centred features A and B: Σ₁Σ₂ =
    AᵀA BᵀB / ((N-1)(M-1)) has the nonzero eigenvalues of (A Bᵀ)(A Bᵀ)ᵀ / ((N-1)(M-1)). Exact for any N, M and D (no
    D×D matrix square root, whose iterations go astray on the rank-deficient covariances of N < D), in float64."""
    if len(first) < 2 or len(second) < 2:
        raise ValueError("a Fréchet distance needs at least 2 samples in each set")
    first, second = first.double(), second.double()
    first_mean, second_mean = first.mean(dim=0), second.mean(dim=0)
    first, second = first - first_mean, second - second_mean  # N×D, M×D centred
    first_n, second_n = len(first) - 1, len(second) - 1
    traces = first.square().sum() / first_n + second.square().sum() / second_n
    cross = torch.linalg.svdvals(first @ second.T).sum() / math.sqrt(first_n * second_n)  # N×M
    return float((first_mean - second_mean).square().sum() + traces - 2 * cross)


class MetricNetworks(NamedTuple):
    perceptual: PerceptualFeatures | None  # None: absent
    face: FaceDescriptor | None
    status: dict[str, str]  # network name -> "active" or "absent: <why>"


def load_metric_networks() -> MetricNetworks:
    """The perceptual and face networks from their pinned files (models/nets/weights.py); one whose files are
    missing or wrong is absent, with the one-line reason, and its figures are left out (nothing replaces it)."""
    status: dict[str, str] = {}
    loaded: dict[str, nn.Module | None] = {}
    for network, make in ((PERCEPTUAL_NETWORK, PerceptualFeatures), (FACE_NETWORK, FaceDescriptor)):
        problem = network_problem(network)
        if problem is None:
            try:
                loaded[network], status[network] = make(), "active"
                continue
            except NetWeightsError as error:
                problem = str(error)
        loaded[network], status[network] = None, f"absent: {problem}"
    perceptual, face = loaded[PERCEPTUAL_NETWORK], loaded[FACE_NETWORK]
    assert perceptual is None or isinstance(perceptual, PerceptualFeatures)
    assert face is None or isinstance(face, FaceDescriptor)
    return MetricNetworks(perceptual=perceptual, face=face, status=status)


def held_out_motions(config: EvalConfig) -> HeadMotion:
    """Motions from a seed no training stream uses: smooth clips, or independent random poses/expressions."""
    generator = torch.Generator().manual_seed(config.seed)
    if config.motions == "random":
        return sample_motions(config.clips * config.frames_per_clip, generator=generator)
    if config.motions != "clips":
        raise ValueError(f"unknown motion set {config.motions!r} (known: {', '.join(MOTION_SETS)})")
    return HeadMotion.cat([sample_clip(config.frames_per_clip, generator=generator) for _ in range(config.clips)])


def _source_identities(config: EvalConfig, model: AvatarModel) -> tuple[Identity, str]:
    if config.refine_steps and not config.enroll_shots:
        raise ValueError("--refine-steps refines enrolled avatars: it needs --enroll-shots")
    if config.data is not None:
        meta = read_meta(Path(config.data))
        return load_identities(meta.root / "avatars.npz"), f"the {meta.num_avatars} avatars of {meta.root}"
    if model.kind == "student" and not config.enroll_shots:
        raise ValueError("a student is locked to its avatars: --data must name the dataset it was trained on (or --enroll-shots)")
    if config.sources < 1:
        raise ValueError("--sources must be at least 1")
    generator = torch.Generator().manual_seed(config.seed + 2)
    return sample_identities(config.sources, generator=generator), f"{config.sources} held-out identities"


# Figures' fields for the region PSNRs, in REGION_NAMES order.
REGION_FIELDS = {"eyes": "eye_psnr", "mouth": "mouth_psnr"}
REGION_PERCEPTUAL_FIELDS = {"eyes": "eye_perceptual", "mouth": "mouth_perceptual"}
REGION_CROP = 112  # px: the side eye and mouth boxes are resized to for EfficientNet-Lite0 (half its training size)
TARGETS = "targets"  # the name FigureScorer keeps the targets' pooled features under


class FigureScorer:
    """Per-image figures of named image sets against their targets, accumulated over batches (and each set's
    EfficientNet-Lite0 pooled features, for FD-EffNet over the whole set). Figures' fields name the columns."""

    def __init__(self, *, regressor: ParameterRegressor | None, networks: MetricNetworks, metric_size: int = 224) -> None:
        self.regressor = regressor
        self.networks = networks
        self.metric_size = metric_size
        self.values: dict[str, dict[str, list[Tensor]]] = {}  # set -> Figures field -> per-batch B values
        self.features: dict[str, list[Tensor]] = {}  # set (and TARGETS) -> per-batch B×1280 pooled features
        self.zero_answer: list[Tensor] = []  # per-batch B: the ARKit error of answering zero

    def _metric_input(self, images: Tensor) -> Tensor:
        """B×3×S×S -> B×3×m×m for EfficientNet-Lite0 (antialiased either way); as it is when metric_size is 0 or S."""
        if self.metric_size in (0, images.shape[-1]):
            return images
        return F.interpolate(images, size=(self.metric_size, self.metric_size), mode="bilinear", antialias=True, align_corners=False)

    def add_batch(
        self,
        guesses: dict[str, AvatarOutput],
        truth: AvatarOutput,
        *,
        landmarks: Tensor,
        source: AvatarOutput,
        source_landmarks: Tensor,
        motion: HeadMotion,
        identity_targets: Tensor | None,
    ) -> None:
        """Score each named B-image set against the truth. landmarks: the truth's, B×68×2 pixels (pixel i spans
        [i, i+1)); source: the avatars' source images and source_landmarks their own; identity_targets: the avatars'
        standardised identities (None exactly when there is no regressor)."""
        perceptual, face = self.networks.perceptual, self.networks.face
        truth_fg = on_white(truth.rgb, truth.alpha)
        truth_features = truth_regions = None
        if perceptual is not None:
            truth_features = perceptual(self._metric_input(truth_fg))
            truth_regions = perceptual(region_crops(truth_fg, landmarks, size=REGION_CROP).flatten(0, 1))  # B×R×3×c×c -> B·R×…
            self.features.setdefault(TARGETS, []).append(truth_features.pooled)
        if face is not None:  # dlib's chips put pixel centres on integers; ours are at i + 0.5
            truth_descriptor = face(align_face_chips(truth_fg, landmarks - 0.5))  # B×128
            source_fg = on_white(source.rgb.clamp(0, 1), source.alpha.clamp(0, 1))
            source_descriptor = face(align_face_chips(source_fg, source_landmarks - 0.5))
        if self.regressor is not None:
            self.zero_answer.append(zero_answer_error(motion))
        for name, guess in guesses.items():
            guess_rgb = guess.rgb.clamp(0, 1)
            guess_fg = on_white(guess_rgb, guess.alpha.clamp(0, 1))
            columns = {
                "psnr": _psnr(guess_rgb, truth.rgb),
                "ssim": ssim(guess_rgb, truth.rgb, data_range=1.0, size_average=False),
                "foreground_psnr": _psnr(guess_fg, truth_fg),
                "foreground_ssim": ssim(guess_fg, truth_fg, data_range=1.0, size_average=False),
            }
            regions = region_psnr(guess_fg, truth_fg, landmarks)  # B×R
            columns.update({REGION_FIELDS[region]: regions[:, index] for index, region in enumerate(REGION_NAMES)})
            if perceptual is not None and truth_features is not None and truth_regions is not None:
                guess_features = perceptual(self._metric_input(guess_fg))
                columns["perceptual_distance"] = output_distance(guess_features, truth_features)
                guess_regions = perceptual(region_crops(guess_fg, landmarks, size=REGION_CROP).flatten(0, 1))  # the target's boxes
                by_region = output_distance(guess_regions, truth_regions).view(-1, len(REGION_NAMES))  # B·R -> B×R
                columns.update({REGION_PERCEPTUAL_FIELDS[region]: by_region[:, index] for index, region in enumerate(REGION_NAMES)})
                self.features.setdefault(name, []).append(guess_features.pooled)
            if face is not None:
                descriptor = face(align_face_chips(guess_fg, landmarks - 0.5))  # the output is in the target's pose
                columns["csim_dlib_target"] = F.cosine_similarity(descriptor, truth_descriptor, dim=1)
                columns["csim_dlib_source"] = F.cosine_similarity(descriptor, source_descriptor, dim=1)
            if self.regressor is not None:
                # Its crops placed by its own landmarks: an output in the wrong pose is read for the expression it shows
                # (the rotation error tells the pose), not misread through crops placed by the target's landmarks.
                errors = parameter_errors(self.regressor(guess_fg), motion, identity_targets)  # B×3
                columns.update(rotation_error_deg=errors[:, 0], expression_error=errors[:, 1], identity_error=errors[:, 2])
            for key, value in columns.items():
                self.values.setdefault(name, {}).setdefault(key, []).append(value.float())

    def figures(self, name: str, *, full_frame: bool) -> Figures:
        """The means over every pair of one set (full-frame PSNR/SSIM only when ``full_frame``), and its FD-EffNet."""
        means: dict[str, float | None] = {key: float(torch.cat(values).mean()) for key, values in self.values[name].items()}
        if not full_frame:
            means.update(psnr=None, ssim=None)
        if name in self.features and sum(len(batch) for batch in self.features[TARGETS]) >= 2:  # FD-EffNet needs two images per set
            means["fd_effnet"] = max(0.0, frechet_distance(torch.cat(self.features[name]), torch.cat(self.features[TARGETS])))
        return Figures(**means)

    def expression_zero_answer(self) -> float | None:
        return float(torch.cat(self.zero_answer).mean()) if self.zero_answer else None

    def notes(self) -> tuple[str, ...]:
        if TARGETS not in self.features:
            return ()
        count, dimensions = torch.cat(self.features[TARGETS]).shape
        if count < 2:
            return ("FD-EffNet: absent (it needs at least 2 pairs)",)
        note = f"FD-EffNet: {count} images per set, {dimensions}-d EfficientNet-Lite0 pooled features"
        if count <= dimensions:
            note += (
                f"; fewer samples than dimensions, so the covariances are rank-deficient (rank ≤ {count - 1}) and the figure "
                "is biased upward: compare it within one run, or between runs of the same pairs, not with other FDs"
            )
        return (note,)


def evaluate(
    config: EvalConfig,
    *,
    sheet_path: Path | None = None,
    progress: bool = True,
    model: AvatarModel | None = None,
    networks: MetricNetworks | None = None,
) -> EvalReport:
    """The benchmark of ``config.model`` (or of ``model``, already loaded, when given); ``networks``: the metric
    networks, already loaded (load_metric_networks when not given)."""
    if config.driver not in DRIVER_KINDS:
        raise ValueError(f"unknown driver {config.driver!r} (known: {', '.join(DRIVER_KINDS)})")
    if config.metric_size < 0:
        raise ValueError("--metric-size must be 0 (as the images are) or a side in pixels")
    if config.retarget and config.driver != "landmarks":
        raise ValueError("--retarget moves landmarks: it needs --driver landmarks (ARKit graphs retarget already)")
    model = model if model is not None else load_avatar_model(Path(config.model), driver=config.driver)
    regressor = None if config.regressor is None else load_regressor(Path(config.regressor))
    networks = networks if networks is not None else load_metric_networks()
    avatars, sources_text = _source_identities(config, model)
    heads = SyntheticHeads(resolution=model.resolution)
    # The same draws, in the same order, for every model: teacher and student see the same pairs.
    generator = torch.Generator().manual_seed(config.seed + 1)
    drivers = sample_identities(config.clips, generator=generator)
    motions = held_out_motions(config)
    if config.is_centred:
        motions = motions.centred()  # as curves place a head (no translation or scale): truth, driver and source alike
    count = len(motions)
    driver_of = torch.arange(count) // config.frames_per_clip  # one driver identity per clip
    avatar_of = torch.randint(0, len(avatars), (count,), generator=generator)
    with torch.inference_mode():
        neutral_render = heads.render(avatars, neutral_motion(len(avatars)))  # A×3×H×W: the source images
        neutral = AvatarOutput(rgb=neutral_render.rgb, alpha=neutral_render.alpha)
        enrollment_seconds = None
        if config.enroll_shots:
            frames, frame_landmarks = enrollment_frames(
                heads, avatars, neutral.rgb, neutral_render.landmarks, shots=config.enroll_shots, seed=config.seed + 3
            )
            seconds = model.enroll_sources(frames, frame_landmarks, refine_steps=config.refine_steps)
            enrollment_seconds = {"median": float(statistics.median(seconds)), "worst": float(max(seconds))}
        else:
            model.set_sources(neutral.rgb)
        avatar_targets = regressor.standardise(avatars) if regressor is not None else None
        # Retargeting's neutrals: each driver identity's and each avatar's landmarks in the neutral motion (crop units).
        driver_neutral = heads.landmarks(drivers, neutral_motion(len(drivers))) / model.resolution
        avatar_neutral = neutral_render.landmarks / model.resolution
    scorer = FigureScorer(regressor=regressor, networks=networks, metric_size=config.metric_size)
    sheet_rows: list[Tensor] = []
    with torch.inference_mode(), tqdm(total=count, desc="evaluating", unit="pair", disable=not progress) as bar:
        for start in range(0, count, config.batch_size):
            batch = slice(start, min(start + config.batch_size, count))
            motion, avatar = motions[batch], avatar_of[batch]
            identity_targets = None if avatar_targets is None else avatar_targets[avatar]
            driver_render = heads.render(drivers[driver_of[batch]], motion)
            truth_render = heads.render(avatars[avatar], motion)  # cross target = self driver = self target
            driver = AvatarOutput(rgb=driver_render.rgb, alpha=driver_render.alpha)
            truth = AvatarOutput(rgb=truth_render.rgb, alpha=truth_render.alpha)
            source = AvatarOutput(rgb=neutral.rgb[avatar], alpha=neutral.alpha[avatar])
            cross_signal = _signal(config.driver, motion, driver_render, model.resolution)
            if config.retarget:  # self-reenactment needs none: its driver's neutral is the avatar's
                cross_signal = retarget_landmarks(cross_signal, driver_neutral[driver_of[batch]], avatar_neutral[avatar]).float()
            cross = model(cross_signal, avatar)
            itself = model(_signal(config.driver, motion, truth_render, model.resolution), avatar)
            guesses = {"cross": cross, "driver": driver, "self": itself, "source": source}
            if regressor is not None:
                guesses["truth"] = truth  # the regressor's floor
            scorer.add_batch(
                guesses,
                truth,
                landmarks=truth_render.landmarks,
                source=source,
                source_landmarks=neutral_render.landmarks[avatar],
                motion=motion,
                identity_targets=identity_targets,
            )
            if (start // config.batch_size) % max(1, count // config.batch_size // 6) == 0 and len(sheet_rows) < 6 * 5:
                sheet_rows += [source.rgb[0], driver.rgb[0], _shown(cross, model)[0], _shown(truth, model)[0], _shown(itself, model)[0]]
            bar.update(batch.stop - batch.start)
    if sheet_path is not None:
        save_png(contact_sheet(torch.stack(sheet_rows), columns=5), sheet_path)
    full, source_copy = model.draws_background, scorer.figures("source", full_frame=True)
    return EvalReport(
        model=str(config.model),
        model_kind=model.kind,
        motions=config.motions,
        driver=config.driver,
        pairs=count,
        resolution=model.resolution,
        sources=sources_text,
        cross=CrossFigures(
            model_output=scorer.figures("cross", full_frame=full),
            source_copy=source_copy,
            driver_copy=scorer.figures("driver", full_frame=True),
        ),
        self_reenactment=SelfFigures(model_output=scorer.figures("self", full_frame=full), source_copy=source_copy),
        ground_truth=scorer.figures("truth", full_frame=True) if regressor is not None else None,
        regressor=config.regressor,
        expression_zero_answer=scorer.expression_zero_answer(),
        networks=dict(networks.status),
        notes=scorer.notes() + ((CENTRED_NOTE,) if config.is_centred else ()),
        enrollment_seconds=enrollment_seconds,
    )


def enrollment_frames(
    heads: SyntheticHeads, identities: Identity, sources: Tensor, source_landmarks: Tensor, *, shots: int, seed: int
) -> tuple[Tensor, Tensor]:
    """What a user would enroll each avatar from: A×K×3×H×W, the source image (neutral) first, then K - 1 frames of a
    talking-head clip of that identity (another seed than the benchmark's motions); and their landmarks A×K×68×2."""
    if shots < 1:
        raise ValueError(f"--enroll-shots must be at least 1, got {shots}")
    frames, landmarks = [sources[:, None]], [source_landmarks[:, None]]  # A×1×3×H×W, A×1×68×2
    if shots > 1:
        generator = torch.Generator().manual_seed(seed)
        clip_frames, clip_landmarks = [], []
        for index in range(len(identities)):
            clip = sample_clip(ENROLLMENT_CLIP_FRAMES, generator=generator)
            picked = clip[torch.randperm(ENROLLMENT_CLIP_FRAMES, generator=generator)[: shots - 1]]
            render = heads.render(identities[[index] * (shots - 1)], picked)
            clip_frames.append(render.rgb)  # (K-1)×3×H×W
            clip_landmarks.append(render.landmarks)  # (K-1)×68×2
        frames.append(torch.stack(clip_frames))  # A×(K-1)×3×H×W
        landmarks.append(torch.stack(clip_landmarks))
    return torch.cat(frames, dim=1), torch.cat(landmarks, dim=1)


ENROLLMENT_CLIP_FRAMES = 48


CENTRED_NOTE = (
    "centred: these motions are drawn centred at the default size (targets and baselines too), as ARKit curves place a head "
    "(they carry no translation or scale); compare with other centred rows (--centred) for the same clips"
)


def _signal(kind: str, motion: HeadMotion, driver_render: HeadRender, resolution: int) -> Tensor:
    """What drives the model: the driver image, its motion as ARKit curves (no head translation or scale,
    as a capture app sends), or its 68 landmarks in crop units."""
    if kind == "arkit":
        return motion.arkit_curves().float()
    if kind == "landmarks":
        return (driver_render.landmarks / resolution).float()
    return driver_render.rgb


def _shown(output: AvatarOutput, model: AvatarModel) -> Tensor:
    """An output as the contact sheet shows it: as drawn, or on white for a model without background."""
    rgb = output.rgb.clamp(0, 1)
    return rgb if model.draws_background else on_white(rgb, output.alpha.clamp(0, 1))


def write_report(report: EvalReport, config: EvalConfig, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"config": asdict(config), **asdict(report)}, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


# -- side by side ---------------------------------------------------------------------------------

# (report key, column title, decimals)
TABLE_COLUMNS = (
    ("psnr", "PSNR", 2),
    ("ssim", "SSIM", 4),
    ("foreground_psnr", "fg PSNR", 2),
    ("foreground_ssim", "fg SSIM", 4),
    ("eye_psnr", "eye PSNR", 2),
    ("mouth_psnr", "mouth PSNR", 2),
    ("perceptual_distance", "perceptual distance (EfficientNet-Lite0)", 4),
    ("eye_perceptual", "eye perceptual (EfficientNet-Lite0)", 4),
    ("mouth_perceptual", "mouth perceptual (EfficientNet-Lite0)", 4),
    ("csim_dlib_target", "CSIM-dlib (target)", 4),
    ("csim_dlib_source", "CSIM-dlib (source)", 4),
    ("fd_effnet", "FD-EffNet", 2),
    ("rotation_error_deg", "rotation err °", 2),
    ("expression_error", "ARKit err", 4),
    ("identity_error", "identity err σ", 3),
)
_PAIRING = ("motions", "driver", "pairs", "sources")  # reports that differ in any of these (or the seed) scored other pairs


def _cells(figures: dict[str, Any] | None) -> list[str]:
    if figures is None:
        return ["—"] * len(TABLE_COLUMNS)
    return ["—" if figures.get(key) is None else f"{figures[key]:.{digits}f}" for key, _, digits in TABLE_COLUMNS]


def _row(name: str, px: str, cells: list[str]) -> str:
    return "| " + " | ".join([name, px, *cells]) + " |"


def side_by_side_table(reports: list[dict[str, Any]], *, labels: list[str] | None = None) -> str:
    """One Markdown table from eval reports (as written by write_report) of the same pairs: each model's cross-
    and self-reenactment output, then the baselines once per resolution (images are scored at the model's
    resolution), then the all-zero ARKit answer. "—": a figure that does not exist (no full frame for a model
    without background, no regressor, an absent metric network, or a report written before the figure existed);
    absent networks are listed under the table. ``labels`` name the models (default: "<kind> (<file name>)").
    Reports of different pairs raise ValueError."""
    if labels is not None and len(labels) != len(reports):
        raise ValueError(f"{len(labels)} labels for {len(reports)} reports: give one per report")
    first = reports[0]
    for report in reports[1:]:
        differs = [key for key in _PAIRING if report[key] != first[key]]
        if differs or report["config"]["seed"] != first["config"]["seed"]:
            raise ValueError(f"{report['model']} was evaluated on other pairs than {first['model']} ({', '.join(differs) or 'seed'})")
        sizes = (report["config"].get("metric_size"), first["config"].get("metric_size"))
        if None not in sizes and sizes[0] != sizes[1]:
            raise ValueError(f"{report['model']} was scored at another --metric-size than {first['model']} ({sizes[0]} vs {sizes[1]})")
    header = ["", "px", *(title for _, title, _ in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, report in enumerate(reports):
        name = labels[index] if labels is not None else f"{report['model_kind']} ({Path(report['model']).name})"
        px = str(report["resolution"])
        lines.append(_row(f"cross: {name}", px, _cells(report["cross"]["model_output"])))
        lines.append(_row(f"self: {name}", px, _cells(report["self_reenactment"]["model_output"])))
    for report in reports:  # each resolution's baselines (images are scored at the model's resolution)
        if any(other["resolution"] == report["resolution"] for other in reports[: reports.index(report)]):
            continue
        px = str(report["resolution"])
        lines.append(_row("baseline: source copy", px, _cells(report["cross"]["source_copy"])))
        lines.append(_row("baseline: driver copy (cross)", px, _cells(report["cross"]["driver_copy"])))
        if report.get("ground_truth") is not None:
            lines.append(_row("ground truth (regressor floor)", px, _cells(report["ground_truth"])))
    zero = next((report["expression_zero_answer"] for report in reports if report.get("expression_zero_answer") is not None), None)
    if zero is not None:  # the same motions for every report: one row
        lines.append(_row("baseline: ARKit all zero", "", _cells({"expression_error": zero})))
    absent = [
        f"{Path(report['model']).name}: {NETWORK_FIGURES.get(network, network)} {status}"
        for report in reports
        for network, status in report.get("networks", {}).items()
        if status != "active"
    ]
    return "\n".join(lines + ([""] + absent if absent else []))
