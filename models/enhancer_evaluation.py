"""`megalive-train enhancer-eval`: the high-resolution enhancer's benchmark, at the high resolution (DESIGN.md §4.2).

The frozen teacher reenacts held-out SyntheticHeads identities at its resolution r; its output is brought to 2r
two ways, and both are scored against the renderer's ground truth at 2r:
    teacher + bicubic   the teacher's rgb and alpha upsampled bicubically (clamped to [0, 1]): the baseline
    enhanced            the enhancer's output
Pairs, drawn as `megalive-train eval` draws them (models/evaluation.py), from seeds no training stream uses (the
enhancer's SyntheticPairs hash their seeds): source identities from seed + 2, one driver identity per clip from
seed + 1, motions (smooth clips) from seed. Sources are the identities' neutral frames. Per pair, two reenactments
with one target (the source identity in the driver's motion, rendered at 2r):
    cross  driven by the driver identity's frame
    self   driven by the source identity's own frame in that motion
The teacher reads the area-downsampled 2r renders, as in training.

Figures (models/evaluation.py's FigureScorer, on every image composited on white by its own mask, since the teacher
draws the foreground only): foreground PSNR and SSIM; eye and mouth PSNR (in the target's eye and mouth boxes from
its 68 landmarks, models/face_regions.py); perceptual distance (EfficientNet-Lite0) to the target (images resized
to ``metric_size``), and between the eye and the mouth boxes' crops. Without the EfficientNet-Lite0 weight files
(make nets) the perceptual figures are absent, and the report says why.

Writes, in the output folder: enhancer-eval.json (config and figures), enhancer-eval.md (the Markdown table) and
enhancer-contact-sheet.png (per cross-driven pair: the teacher's output at r shown with its pixels (nearest ×2),
teacher + bicubic, enhanced, ground truth; all on white).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from models.blocks import on_white
from models.data.heads import HeadMotion, Identity, SyntheticHeads, contact_sheet, neutral_motion, sample_clip, sample_identities
from models.data.paired import save_png
from models.evaluation import TABLE_COLUMNS as EVALUATION_COLUMNS
from models.evaluation import AvatarOutput, Figures, FigureScorer, MetricNetworks
from models.megaportraits.distill import TeacherAvatars
from models.megaportraits.enhancer import Enhancer, area_downsample, bicubic_upsample, load_enhancer, load_frozen_teacher
from models.nets.perceptual import PerceptualFeatures
from models.nets.weights import PERCEPTUAL_NETWORK, NetWeightsError, network_problem
from models.training.common import TrainingError
from models.training.enhancer_settings import EnhancerEvalConfig

REPORT_NAME, TABLE_NAME, SHEET_NAME = "enhancer-eval.json", "enhancer-eval.md", "enhancer-contact-sheet.png"
ROWS = ("cross: teacher + bicubic", "cross: enhanced", "self: teacher + bicubic", "self: enhanced")
SHEET_ROWS = 6


def check_eval_config(config: EnhancerEvalConfig) -> None:
    """Cheap checks, before anything is loaded or written; raises TrainingError (one line)."""
    problems = [message for bad, message in (
        (config.sources < 1, "--sources must be at least 1"),
        (config.clips < 1 or config.frames_per_clip < 1, "--clips and --frames must be at least 1"),
        (config.batch_size < 1, "--batch must be at least 1"),
        (config.metric_size < 0, "--metric-size must be 0 (as the images are) or a side in pixels"),
        (not Path(config.enhancer).is_file(), f"--enhancer {config.enhancer}: no such file"),
        (config.teacher is not None and not Path(config.teacher).is_file(), f"--teacher {config.teacher}: no such file"),
    ) if bad]  # fmt: skip
    if problems:
        raise TrainingError(problems[0])


@dataclass(frozen=True)
class EnhancerReport:
    enhancer: str
    enhancer_step: int
    teacher: str
    teacher_preset: str
    teacher_digest: str
    teacher_as_trained: bool  # the teacher's weights are those the enhancer was trained behind
    input_resolution: int  # r: the teacher's
    output_resolution: int  # 2r: where every figure is measured
    pairs: int  # per reenactment kind (cross, self)
    sources: str
    figures: dict[str, Figures]  # ROWS -> figures
    networks: dict[str, str] = field(default_factory=dict)  # metric network -> "active" or "absent: <why>"
    notes: tuple[str, ...] = ()

    def table(self) -> str:
        """The Markdown table (and, under it, what is absent and why)."""
        header = ["", *(title for _, title, _ in TABLE_COLUMNS)]
        lines = [
            f"Enhancer {self.enhancer} (step {self.enhancer_step}) behind teacher {self.teacher} ({self.teacher_preset}): "
            f"{self.pairs} held-out pairs per row, {self.sources}, scored at {self.output_resolution}×{self.output_resolution} "
            f"(the teacher draws {self.input_resolution}×{self.input_resolution}).",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for name, figures in self.figures.items():
            cells = ["—" if getattr(figures, key) is None else f"{getattr(figures, key):.{digits}f}" for key, _, digits in TABLE_COLUMNS]
            lines.append("| " + " | ".join([name, *cells]) + " |")
        lines += [""] + [f"- {network}: {status}" for network, status in self.networks.items() if status != "active"]
        lines += [f"- note: {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


# (Figures field, column title, decimals): the evaluation's columns that the enhancer's benchmark scores.
SCORED_FIELDS = (
    "foreground_psnr",
    "foreground_ssim",
    "eye_psnr",
    "mouth_psnr",
    "perceptual_distance",
    "eye_perceptual",
    "mouth_perceptual",
)
TABLE_COLUMNS = tuple(column for column in EVALUATION_COLUMNS if column[0] in SCORED_FIELDS)


class HeldOutDraws(NamedTuple):
    sources: Identity  # A source identities
    drivers: Identity  # one driver identity per clip
    motions: HeadMotion  # N = clips × frames_per_clip
    source_of: Tensor  # N indices into sources
    driver_of: Tensor  # N indices into drivers


def held_out_draws(config: EnhancerEvalConfig) -> HeldOutDraws:
    """The benchmark's identities and motions, a function of the config's seed, sizes and counts only."""
    generator = torch.Generator().manual_seed(config.seed)
    motions = HeadMotion.cat([sample_clip(config.frames_per_clip, generator=generator) for _ in range(config.clips)])
    sources = sample_identities(config.sources, generator=torch.Generator().manual_seed(config.seed + 2))
    generator = torch.Generator().manual_seed(config.seed + 1)
    drivers = sample_identities(config.clips, generator=generator)
    count = len(motions)
    source_of = torch.randint(0, config.sources, (count,), generator=generator)
    return HeldOutDraws(sources, drivers, motions, source_of, torch.arange(count) // config.frames_per_clip)


class PairBatch(NamedTuple):
    cross_driver: Tensor  # B×3×2r×2r: the driver identity in the motion
    truth: AvatarOutput  # B×3×2r×2r, B×1×2r×2r: the source identity in the motion (the self-driven driver too)
    landmarks: Tensor  # B×68×2, the truth's, in pixels at 2r


def render_pairs(heads: SyntheticHeads, draws: HeldOutDraws, pairs: slice) -> PairBatch:
    """The 2r renders of some of the pairs."""
    motion = draws.motions[pairs]
    driver = heads.render(draws.drivers[draws.driver_of[pairs]], motion)
    truth = heads.render(draws.sources[draws.source_of[pairs]], motion)
    return PairBatch(cross_driver=driver.rgb, truth=AvatarOutput(rgb=truth.rgb, alpha=truth.alpha), landmarks=truth.landmarks)


def perceptual_network() -> MetricNetworks:
    """EfficientNet-Lite0 from its pinned files, or absent with the one-line reason (nothing stands in for it)."""
    problem = network_problem(PERCEPTUAL_NETWORK)
    if problem is None:
        try:
            return MetricNetworks(perceptual=PerceptualFeatures(), face=None, status={PERCEPTUAL_NETWORK: "active"})
        except NetWeightsError as error:
            problem = str(error)
    return MetricNetworks(perceptual=None, face=None, status={PERCEPTUAL_NETWORK: f"absent: {problem}"})


def bicubic_baseline(rgb: Tensor, alpha: Tensor) -> AvatarOutput:
    """The teacher's output at r brought to 2r bicubically, clamped to [0, 1]."""
    return AvatarOutput(rgb=bicubic_upsample(rgb).clamp(0, 1), alpha=bicubic_upsample(alpha).clamp(0, 1))


def _shown(output: AvatarOutput) -> Tensor:
    return on_white(output.rgb.clamp(0, 1), output.alpha.clamp(0, 1))


class LoadedModels(NamedTuple):
    enhancer: Enhancer
    enhancer_step: int
    teacher: TeacherAvatars
    teacher_path: str
    teacher_preset: str
    teacher_digest: str
    as_trained: bool


def load_models(config: EnhancerEvalConfig) -> LoadedModels:
    """The enhancer and its teacher; TrainingError (one line) for anything else, or an enhancer for another teacher preset."""
    check_eval_config(config)
    loaded = load_enhancer(Path(config.enhancer), expect_teacher_preset=config.preset)
    trained_behind = loaded.teacher
    teacher_path = config.teacher if config.teacher is not None else trained_behind.get("path")
    if teacher_path is None or not Path(teacher_path).is_file():
        raise TrainingError(f"{config.enhancer}: the teacher it was trained behind ({teacher_path}) is not found; give --teacher")
    teacher = load_frozen_teacher(Path(teacher_path))
    if teacher.preset != trained_behind.get("preset"):
        raise TrainingError(
            f"{config.enhancer} is an enhancer for teacher preset {trained_behind.get('preset')!r}, but teacher {teacher_path} "
            f"is {teacher.preset!r}"
        )
    return LoadedModels(
        enhancer=loaded.enhancer,
        enhancer_step=loaded.step,
        teacher=TeacherAvatars(model=teacher.model),
        teacher_path=str(teacher_path),
        teacher_preset=teacher.preset,
        teacher_digest=teacher.digest,
        as_trained=teacher.digest == trained_behind.get("digest"),
    )


def evaluate_enhancer(
    config: EnhancerEvalConfig, *, progress: bool = True, models: LoadedModels | None = None, networks: MetricNetworks | None = None
) -> EnhancerReport:
    """The benchmark; writes the report, the table and the contact sheet into ``config.out``, and returns the report.
    Every refusal comes before the folder is made."""
    models = models if models is not None else load_models(config)
    networks = networks if networks is not None else perceptual_network()
    enhancer, teacher = models.enhancer, models.teacher
    low, high = enhancer.config.input_resolution, enhancer.config.output_resolution
    heads = SyntheticHeads(resolution=high)
    draws = held_out_draws(config)
    count = len(draws.motions)
    with torch.inference_mode():
        sources = heads.render(draws.sources, neutral_motion(len(draws.sources)))
        teacher.set_sources(area_downsample(sources.rgb))  # A×3×2r×2r -> A×3×r×r
    scorers = {kind: FigureScorer(regressor=None, networks=networks, metric_size=config.metric_size) for kind in ("cross", "self")}
    sheet: list[Tensor] = []
    every = max(1, count // SHEET_ROWS)
    with torch.inference_mode(), tqdm(total=count, desc="enhancer benchmark", unit="pair", disable=not progress) as bar:
        for start in range(0, count, config.batch_size):
            pairs = slice(start, min(start + config.batch_size, count))
            batch, avatar = render_pairs(heads, draws, pairs), draws.source_of[pairs]
            source = AvatarOutput(rgb=sources.rgb[avatar], alpha=sources.alpha[avatar])
            for kind, driver in (("cross", batch.cross_driver), ("self", batch.truth.rgb)):
                rgb, alpha = teacher(area_downsample(driver), avatar)  # B×3×r×r, B×1×r×r in [0, 1]
                enhanced = enhancer(rgb, alpha)
                guesses = {
                    "teacher + bicubic": bicubic_baseline(rgb, alpha),
                    "enhanced": AvatarOutput(rgb=enhanced.rgb.clamp(0, 1), alpha=enhanced.alpha.clamp(0, 1)),
                }
                scorers[kind].add_batch(
                    guesses,
                    batch.truth,
                    landmarks=batch.landmarks,
                    source=source,
                    source_landmarks=sources.landmarks[avatar],
                    motion=draws.motions[pairs],
                    identity_targets=None,
                )
                if kind == "cross":
                    for index in range(pairs.stop - pairs.start):
                        if (start + index) % every == 0 and len(sheet) < 4 * SHEET_ROWS:
                            teacher_pixels = F.interpolate(on_white(rgb[index : index + 1], alpha[index : index + 1]), size=high)
                            sheet += [
                                teacher_pixels[0],  # nearest (interpolate's default): the teacher's own pixels
                                _shown(AvatarOutput(*(part[index : index + 1] for part in guesses["teacher + bicubic"])))[0],
                                _shown(AvatarOutput(*(part[index : index + 1] for part in guesses["enhanced"])))[0],
                                _shown(AvatarOutput(*(part[index : index + 1] for part in batch.truth)))[0],
                            ]
            bar.update(pairs.stop - pairs.start)
    figures = {
        f"{kind}: {name}": scorers[kind].figures(name, full_frame=False)
        for kind in ("cross", "self")
        for name in ("teacher + bicubic", "enhanced")
    }
    notes = [
        "figures on the foreground composited on white (the teacher draws no background); the baseline is the teacher's "
        f"{low} px output upsampled bicubically to {high} px and clamped to [0, 1]"
    ]
    if not models.as_trained:
        notes.append(f"the teacher's weights ({models.teacher_digest}) are not those the enhancer was trained behind")
    report = EnhancerReport(
        enhancer=config.enhancer,
        enhancer_step=models.enhancer_step,
        teacher=models.teacher_path,
        teacher_preset=models.teacher_preset,
        teacher_digest=models.teacher_digest,
        teacher_as_trained=models.as_trained,
        input_resolution=low,
        output_resolution=high,
        pairs=count,
        sources=f"{config.sources} held-out identities, {config.clips} held-out driver identities and clips (seed {config.seed})",
        figures={name: figures[name] for name in ROWS},
        networks=dict(networks.status),
        notes=tuple(notes),
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / REPORT_NAME, json.dumps({"config": asdict(config), **asdict(report)}, indent=2) + "\n")
    _write_text(out / TABLE_NAME, report.table())
    save_png(contact_sheet(torch.stack(sheet), columns=4), out / SHEET_NAME)
    return report


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
