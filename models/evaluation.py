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
    motion, identity     with ``--regressor`` (models/nets/parameter_regressor.py): the predicted pose's
                         rotation error in degrees and the mean ARKit control error against the driver's
                         true motion, and the identity error (in prior standard deviations) against the
                         avatar's true identity; its error on the ground truth itself (the floor) beside

Writes eval-<motions>[-<driver>].json and contact-sheet-<motions>[-<driver>].png (per row: source, driver,
cross output, target, self output; outputs and target on white for the teacher).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from pytorch_msssim import ssim
from torch import Tensor
from tqdm import tqdm

from contract.model_card import read_model_card
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
from models.nets.parameter_regressor import ParameterRegressor, load_regressor, on_white, parameter_errors

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
    sources: int = 8  # held-out source identities when there is no --data (teacher only)

    @property
    def name(self) -> str:
        """eval-<motions>[-<driver>]: the file stem of this evaluation's report and contact sheet."""
        return self.motions if self.driver == "image" else f"{self.motions}-{self.driver}"


@dataclass(frozen=True)
class Figures:
    foreground_psnr: float
    foreground_ssim: float
    psnr: float | None = None  # full frame; None where the model does not draw the background
    ssim: float | None = None
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
    model_kind: str  # student | teacher
    motions: str
    driver: str
    pairs: int
    resolution: int
    sources: str  # what the avatars are
    cross: CrossFigures
    self_reenactment: SelfFigures
    ground_truth: Figures | None  # the regressor on the targets themselves: its floor (None without a regressor)
    regressor: str | None

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
        def number(value: float | None, digits: int) -> str:
            return "—" if value is None else f"{value:.{digits}f}"

        lines = [
            f"{self.model_kind} {self.model}: {self.pairs} held-out pairs ({self.motions} motions, new driver identities, "
            f"driven by {self.driver}) at {self.resolution}×{self.resolution}; sources: {self.sources}",
            f"  {'':<31} {'PSNR':>6} {'SSIM':>6} {'fg PSNR':>8} {'fg SSIM':>8} {'rot °':>6} {'expr':>6} {'id σ':>6}",
        ]
        for name, figures in self.rows():
            lines.append(
                f"  {name:<31} {number(figures.psnr, 2):>6} {number(figures.ssim, 4):>6} {number(figures.foreground_psnr, 2):>8} "
                f"{number(figures.foreground_ssim, 4):>8} {number(figures.rotation_error_deg, 2):>6} "
                f"{number(figures.expression_error, 4):>6} {number(figures.identity_error, 3):>6}"
            )
        if self.regressor is None:
            lines.append("  motion and identity errors: absent (no --regressor given)")
        return "\n".join(lines)


class AvatarOutput(NamedTuple):
    rgb: Tensor  # B×3×H×W
    alpha: Tensor  # B×1×H×W


class AvatarModel(Protocol):
    kind: str
    resolution: int
    draws_background: bool

    def set_sources(self, sources: Tensor) -> None:
        """The avatars' source images, A×3×H×W in [0, 1] (a student checks only their number)."""

    def __call__(self, signal: Tensor, avatar: Tensor) -> AvatarOutput:
        """signal: B×… driving input; avatar: B indices into the sources."""


class OnnxAvatarModel:
    """An exported student run with ONNX Runtime CPU (the artefact the server ships), through the graph
    of one driver kind: image (``driver``), arkit (``curves``) or landmarks."""

    kind = "student"
    draws_background = True

    def __init__(self, path: Path, *, driver: str = "image") -> None:
        import onnxruntime as ort

        card = read_model_card(path)  # checked, digests included; ModelCardError is a ValueError with a one-line message
        self.resolution = card.resolution[0]
        self.avatar_names = card.avatar_names
        self.input_name, graph = "driver", path
        if driver != "image":
            adapter = card.adapter(driver)
            if adapter is None:
                raise ValueError(f"{path} has no {driver!r} driver (it has {list(card.drivers)})")
            self.input_name, graph = adapter.input_name, adapter.model_path
        self.session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])

    def set_sources(self, sources: Tensor) -> None:
        if len(sources) != len(self.avatar_names):
            raise ValueError(f"the model has {len(self.avatar_names)} avatars but the data has {len(sources)}")

    def __call__(self, signal: Tensor, avatar: Tensor) -> AvatarOutput:
        rgb, alpha = self.session.run(["rgb", "alpha"], {self.input_name: signal.numpy(), "avatar": avatar.numpy()})
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

    def __call__(self, signal: Tensor, avatar: Tensor) -> AvatarOutput:
        rgb, alpha = self.avatars(signal, avatar)
        return AvatarOutput(rgb=rgb, alpha=alpha)


def load_avatar_model(path: Path, *, driver: str) -> AvatarModel:
    """A student .onnx or a teacher checkpoint (anything else: ValueError, one line)."""
    if path.suffix == ".onnx":
        return OnnxAvatarModel(path, driver=driver)
    if path.suffix in (".pt", ".pth"):
        from models.training.common import TrainingError

        try:
            return TeacherAvatarModel(path, driver=driver)
        except TrainingError as error:
            raise ValueError(str(error)) from None
    raise ValueError(f"{path}: expected an exported student (.onnx) or a base-model checkpoint (.pt)")


def _psnr(a: Tensor, b: Tensor) -> Tensor:
    mse = (a - b).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)  # per image, data range 1


def held_out_motions(config: EvalConfig) -> HeadMotion:
    """Motions from a seed no training stream uses: smooth clips, or independent random poses/expressions."""
    generator = torch.Generator().manual_seed(config.seed)
    if config.motions == "random":
        return sample_motions(config.clips * config.frames_per_clip, generator=generator)
    if config.motions != "clips":
        raise ValueError(f"unknown motion set {config.motions!r} (known: {', '.join(MOTION_SETS)})")
    return HeadMotion.cat([sample_clip(config.frames_per_clip, generator=generator) for _ in range(config.clips)])


def _source_identities(config: EvalConfig, model: AvatarModel) -> tuple[Identity, str]:
    if config.data is not None:
        meta = read_meta(Path(config.data))
        return load_identities(meta.root / "avatars.npz"), f"the {meta.num_avatars} avatars of {meta.root}"
    if model.kind == "student":
        raise ValueError("a student is locked to its avatars: --data must name the dataset it was trained on")
    if config.sources < 1:
        raise ValueError("--sources must be at least 1")
    generator = torch.Generator().manual_seed(config.seed + 2)
    return sample_identities(config.sources, generator=generator), f"{config.sources} held-out identities"


class _Scorer:
    """Per-image figures of named image sets against targets, accumulated over batches.
    Columns: full PSNR, full SSIM, foreground PSNR, foreground SSIM, rotation°, expression, identity."""

    def __init__(self, regressor: ParameterRegressor | None) -> None:
        self.regressor = regressor
        self.values: dict[str, list[Tensor]] = {}

    def add(self, name: str, guess: AvatarOutput, truth: AvatarOutput, *, motion: HeadMotion, identity_targets: Tensor | None) -> None:
        """identity_targets: the avatars' standardised identities (None exactly when there is no regressor)."""
        guess_rgb = guess.rgb.clamp(0, 1)
        guess_fg, truth_fg = on_white(guess_rgb, guess.alpha.clamp(0, 1)), on_white(truth.rgb, truth.alpha)
        columns = [
            _psnr(guess_rgb, truth.rgb),
            ssim(guess_rgb, truth.rgb, data_range=1.0, size_average=False),
            _psnr(guess_fg, truth_fg),
            ssim(guess_fg, truth_fg, data_range=1.0, size_average=False),
        ]
        if self.regressor is not None:
            columns += list(parameter_errors(self.regressor(guess_fg), motion, identity_targets).unbind(dim=1))
        self.values.setdefault(name, []).append(torch.stack(columns, dim=1))

    def figures(self, name: str, *, full_frame: bool) -> Figures:
        means = [float(value) for value in torch.cat(self.values[name]).mean(dim=0)]
        regressed = means[4:] if len(means) > 4 else [None, None, None]
        return Figures(
            foreground_psnr=means[2],
            foreground_ssim=means[3],
            psnr=means[0] if full_frame else None,
            ssim=means[1] if full_frame else None,
            rotation_error_deg=regressed[0],
            expression_error=regressed[1],
            identity_error=regressed[2],
        )


def evaluate(config: EvalConfig, *, sheet_path: Path | None = None, progress: bool = True, model: AvatarModel | None = None) -> EvalReport:
    """The benchmark of ``config.model`` (or of ``model``, already loaded, when given)."""
    if config.driver not in DRIVER_KINDS:
        raise ValueError(f"unknown driver {config.driver!r} (known: {', '.join(DRIVER_KINDS)})")
    model = model if model is not None else load_avatar_model(Path(config.model), driver=config.driver)
    regressor = None if config.regressor is None else load_regressor(Path(config.regressor))
    avatars, sources_text = _source_identities(config, model)
    heads = SyntheticHeads(resolution=model.resolution)
    # The same draws, in the same order, for every model: teacher and student see the same pairs.
    generator = torch.Generator().manual_seed(config.seed + 1)
    drivers = sample_identities(config.clips, generator=generator)
    motions = held_out_motions(config)
    count = len(motions)
    driver_of = torch.arange(count) // config.frames_per_clip  # one driver identity per clip
    avatar_of = torch.randint(0, len(avatars), (count,), generator=generator)
    with torch.inference_mode():
        neutral_render = heads.render(avatars, neutral_motion(len(avatars)))  # A×3×H×W: the source images
        neutral = AvatarOutput(rgb=neutral_render.rgb, alpha=neutral_render.alpha)
        model.set_sources(neutral.rgb)
        avatar_targets = regressor.standardise(avatars) if regressor is not None else None
    scorer = _Scorer(regressor)
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
            cross = model(_signal(config.driver, motion, driver_render, model.resolution), avatar)
            itself = model(_signal(config.driver, motion, truth_render, model.resolution), avatar)
            for name, guess in (("cross", cross), ("driver", driver), ("self", itself), ("source", source), ("truth", truth)):
                scorer.add(name, guess, truth, motion=motion, identity_targets=identity_targets)
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
    ("rotation_error_deg", "rotation err °", 2),
    ("expression_error", "ARKit err", 4),
    ("identity_error", "identity err σ", 3),
)
_PAIRING = ("motions", "driver", "pairs", "sources")  # reports that differ in any of these (or the seed) scored other pairs


def _cells(figures: dict[str, Any] | None) -> list[str]:
    if figures is None:
        return ["—"] * len(TABLE_COLUMNS)
    return ["—" if figures.get(key) is None else f"{figures[key]:.{digits}f}" for key, _, digits in TABLE_COLUMNS]


def side_by_side_table(reports: list[dict[str, Any]]) -> str:
    """One Markdown table from eval reports (as written by write_report) of the same pairs: each model's cross-
    and self-reenactment output, then the baselines once per resolution (images are scored at the model's
    resolution). "—": a figure that does not exist (no full frame for a model without background, no regressor).
    Reports of different pairs raise ValueError."""
    first = reports[0]
    for report in reports[1:]:
        differs = [key for key in _PAIRING if report[key] != first[key]]
        if differs or report["config"]["seed"] != first["config"]["seed"]:
            raise ValueError(f"{report['model']} was evaluated on other pairs than {first['model']} ({', '.join(differs) or 'seed'})")
    header = ["", "px", *(title for _, title, _ in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for report in reports:
        name = f"{report['model_kind']} ({Path(report['model']).name})"
        lines.append("| " + " | ".join([f"cross: {name}", str(report["resolution"]), *_cells(report["cross"]["model_output"])]) + " |")
        lines.append(
            "| " + " | ".join([f"self: {name}", str(report["resolution"]), *_cells(report["self_reenactment"]["model_output"])]) + " |"
        )
    for report in reports:  # each resolution's baselines (images are scored at the model's resolution)
        if any(other["resolution"] == report["resolution"] for other in reports[: reports.index(report)]):
            continue
        px = str(report["resolution"])
        lines.append("| " + " | ".join(["baseline: source copy", px, *_cells(report["cross"]["source_copy"])]) + " |")
        lines.append("| " + " | ".join(["baseline: driver copy (cross)", px, *_cells(report["cross"]["driver_copy"])]) + " |")
        if report.get("ground_truth") is not None:
            lines.append("| " + " | ".join(["ground truth (regressor floor)", px, *_cells(report["ground_truth"])]) + " |")
    return "\n".join(lines)
