"""`megalive-train eval`: quality of an avatar model against the renderer's ground truth.

Held-out data: driver identities and motions (smooth clips) drawn from seeds the training data never
used, rendered now; the avatars are the training dataset's. For every pair the model's output is
compared with the ground truth (that avatar doing the driver's motion), beside two baselines measured
in the same run: the avatar's neutral frame (knows the identity, ignores the motion) and the driver
frame itself (knows the motion, wrong identity). Writes eval.json and contact_sheet.png.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pytorch_msssim import ssim
from tqdm import tqdm

from models.data.paired import load_identities, read_meta, save_png
from models.data.synthetic import Motion, SyntheticHeads, contact_sheet, neutral_motion, sample_clip, sample_identities, sample_motions

HELD_OUT_SEED = 424242  # never used by `synth`, whose streams are seed*1000 + {1, 2, 3}


@dataclass(frozen=True)
class EvalConfig:
    model: str
    data: str
    clips: int = 8
    frames_per_clip: int = 25
    seed: int = HELD_OUT_SEED
    batch_size: int = 8
    motions: str = "clips"  # clips: smooth performances (sample_clip); random: independent poses and expressions (sample_motions)
    driver: str = "image"  # image: the driver's render; arkit: its exact motion as curves; landmarks: its 68 landmarks

    @property
    def name(self) -> str:
        """eval-<motions>[-<driver>]: the file stem of this evaluation's report and contact sheet."""
        return self.motions if self.driver == "image" else f"{self.motions}-{self.driver}"


@dataclass(frozen=True)
class QualityFigures:
    psnr: float
    ssim: float


@dataclass(frozen=True)
class EvalReport:
    model: str
    motions: str
    driver: str
    pairs: int
    resolution: int
    model_output: QualityFigures
    neutral_baseline: QualityFigures
    driver_baseline: QualityFigures

    def table(self) -> str:
        rows = [("model output", self.model_output), ("baseline: avatar's neutral frame", self.neutral_baseline),
                ("baseline: driver frame", self.driver_baseline)]
        lines = [f"{self.pairs} held-out pairs ({self.motions} motions, new driver identities, driven by {self.driver}) "
                 f"at {self.resolution}×{self.resolution} ({self.model})",
                 f"  {'':<34} {'PSNR dB':>8} {'SSIM':>7}"]
        lines += [f"  {name:<34} {figures.psnr:>8.2f} {figures.ssim:>7.4f}" for name, figures in rows]
        return "\n".join(lines)


class OnnxAvatarModel:
    """An exported avatar model run with ONNX Runtime CPU (the artefact the server ships), through
    the graph of one driver kind: image (``driver``), arkit (``curves``) or landmarks."""

    def __init__(self, path: Path, *, driver: str = "image") -> None:
        import onnxruntime as ort

        sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        self.resolution = int(sidecar["resolution"][0])
        self.avatar_names = tuple(sidecar["avatars"])
        self.input_name, graph = "driver", path
        if driver != "image":
            adapter = (sidecar.get("adapters") or {}).get(driver)
            if adapter is None:
                raise ValueError(f"{path} has no {driver!r} driver (it has {sidecar.get('drivers', ['image'])})")
            self.input_name, graph = adapter["input"]["name"], path.parent / adapter["model_file"]
        self.session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])

    def __call__(self, signal: torch.Tensor, avatar: torch.Tensor) -> torch.Tensor:
        rgb, _ = self.session.run(["rgb", "alpha"], {self.input_name: signal.numpy(), "avatar": avatar.numpy()})
        return torch.from_numpy(rgb)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)  # per image, data range 1


MOTION_SETS = ("clips", "random")
DRIVER_KINDS = ("image", "arkit", "landmarks")


def held_out_motions(config: EvalConfig) -> Motion:
    """Motions from a seed no training stream uses: smooth clips, or independent random poses/expressions."""
    generator = torch.Generator().manual_seed(config.seed)
    if config.motions == "random":
        return sample_motions(config.clips * config.frames_per_clip, generator=generator)
    if config.motions != "clips":
        raise ValueError(f"unknown motion set {config.motions!r} (known: {', '.join(MOTION_SETS)})")
    return Motion.cat([sample_clip(config.frames_per_clip, generator=generator) for _ in range(config.clips)])


def evaluate(config: EvalConfig, *, sheet_path: Path | None = None, progress: bool = True) -> EvalReport:
    if config.driver not in DRIVER_KINDS:
        raise ValueError(f"unknown driver {config.driver!r} (known: {', '.join(DRIVER_KINDS)})")
    model = OnnxAvatarModel(Path(config.model), driver=config.driver)
    meta = read_meta(Path(config.data))
    avatars = load_identities(meta.root / "avatars.npz")
    if len(avatars) != len(model.avatar_names):
        raise ValueError(f"the model has {len(model.avatar_names)} avatars but {meta.root} has {len(avatars)}")
    heads = SyntheticHeads(resolution=model.resolution)
    generator = torch.Generator().manual_seed(config.seed + 1)
    drivers = sample_identities(config.clips, generator=generator)
    motions = held_out_motions(config)
    count = len(motions)
    driver_of = torch.arange(count) // config.frames_per_clip  # one driver identity per clip
    avatar_of = torch.randint(0, len(avatars), (count,), generator=generator)
    with torch.inference_mode():
        neutral = heads.render(avatars, neutral_motion(len(avatars))).rgb  # A×3×H×W
    scores: dict[str, list[torch.Tensor]] = {"model": [], "neutral": [], "driver": []}
    sheet_rows: list[torch.Tensor] = []
    with torch.inference_mode(), tqdm(total=count, desc="evaluating", unit="pair", disable=not progress) as bar:
        for start in range(0, count, config.batch_size):
            batch = slice(start, min(start + config.batch_size, count))
            motion = motions[batch]
            driver_render = heads.render(drivers[driver_of[batch]], motion)
            driver = driver_render.rgb
            truth = heads.render(avatars[avatar_of[batch]], motion).rgb
            if config.driver == "arkit":  # what a capture app would send: curves, no head translation or scale
                signal = motion.arkit_curves().float()
            elif config.driver == "landmarks":  # the driver's 68 landmarks in crop units
                signal = (driver_render.landmarks / model.resolution).float()
            else:
                signal = driver
            output = model(signal, avatar_of[batch])
            for name, guess in (("model", output), ("neutral", neutral[avatar_of[batch]]), ("driver", driver)):
                scores[name].append(torch.stack([_psnr(guess, truth), ssim(guess, truth, data_range=1.0, size_average=False)], dim=1))
            if (start // config.batch_size) % max(1, count // config.batch_size // 6) == 0 and len(sheet_rows) < 6 * 4:
                sheet_rows += [driver[0], output[0].clamp(0, 1), truth[0], neutral[avatar_of[start]]]
            bar.update(batch.stop - batch.start)
    figures = {name: torch.cat(values).mean(dim=0) for name, values in scores.items()}  # PSNR, SSIM per name
    if sheet_path is not None:
        save_png(contact_sheet(torch.stack(sheet_rows), columns=4), sheet_path)
    return EvalReport(
        model=str(config.model), motions=config.motions, driver=config.driver, pairs=count, resolution=model.resolution,
        model_output=QualityFigures(psnr=float(figures["model"][0]), ssim=float(figures["model"][1])),
        neutral_baseline=QualityFigures(psnr=float(figures["neutral"][0]), ssim=float(figures["neutral"][1])),
        driver_baseline=QualityFigures(psnr=float(figures["driver"][0]), ssim=float(figures["driver"][1])),
    )


def write_report(report: EvalReport, config: EvalConfig, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"config": asdict(config), **asdict(report)}, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
