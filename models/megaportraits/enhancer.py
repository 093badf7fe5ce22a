"""The high-resolution enhancer (DESIGN.md §4.2): the frozen teacher's output at twice its resolution.

An image-to-image network reads the teacher's rgb and alpha at r px and predicts a residual over their bicubic
upsample at 2r px, so that it starts as bicubic interpolation (its head is zero at initialisation) and learns
only what bicubic misses:

    rgb, alpha (B×4×r×r) ─stem─▶ ResBlocks at r ─nearest ×2─▶ ⊕ bicubic(rgb, alpha) ─▶ ResBlocks at 2r ─head─▶ residual
    output = bicubic(rgb, alpha) + residual                                              (B×3×2r×2r, B×1×2r×2r)

Blocks are the teacher's (``teacher_blocks.py``: pre-activation GroupNorm ResBlocks with weight-standardised convs).
Outputs are not clamped (a clamp would stop the gradient of a pixel pushed past 1 for good); callers clamp to
[0, 1] for display and scoring, as the benchmark does for every image it scores.

Presets are keyed by the teacher's preset (the enhancer reads that teacher's output): tiny 64 -> 128, cpu128
128 -> 256, paper256 256 -> 512, paper512 512 -> 1024 (the paper's). The widths and block counts are this
project's choices, not figures from the paper, and stay narrow at 2r, where every conv costs four times as much as
at r. Trained by ``models/training/train_enhancer.py``; benchmarked by
``models/enhancer_evaluation.py``.

    preset     r -> 2r       width at r   blocks at r   width at 2r   blocks at 2r   parameters
    tiny       64 -> 128     16           1             8             1                   9,052
    cpu128     128 -> 256    32           2             16            1                  51,948
    paper256   256 -> 512    64           4             32            2                 368,524
    paper512   512 -> 1024   64           4             32            2                 368,524

(``tests/models/test_enhancer.py`` checks the table against the code.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoints import BASE_KIND, ENHANCER_KIND, base_model_from_checkpoint, check_kind, load_checkpoint, load_state, state_digest
from models.megaportraits.base import BASE_PRESETS, BaseModel
from models.megaportraits.teacher_blocks import ResBlock2D, WSConv2d, norm
from models.training.common import TrainingError

SCALE = 2  # the enhancer doubles the side
IMAGE_CHANNELS = 4  # rgb + alpha


def bicubic_upsample(image: Tensor, *, factor: int = SCALE) -> Tensor:
    """B×C×H×W -> B×C×(H·factor)×(W·factor), bicubic (align_corners False; may overshoot [0, 1] a little)."""
    return F.interpolate(image, scale_factor=float(factor), mode="bicubic", align_corners=False)


def area_downsample(image: Tensor, *, factor: int = SCALE) -> Tensor:
    """B×C×H×W -> B×C×(H/factor)×(W/factor), each output pixel the mean of its factor×factor block."""
    return F.avg_pool2d(image, factor)


@dataclass(frozen=True)
class EnhancerConfig:
    teacher_preset: str  # the base-model preset whose output this enhancer reads
    input_resolution: int  # r: the teacher's output side; the enhancer writes 2r
    channels: int  # width of the ResBlocks at r
    blocks: int  # ResBlocks at r
    high_channels: int  # width of the ResBlocks at 2r
    high_blocks: int  # ResBlocks at 2r (the first one also merges in the bicubic image)

    def __post_init__(self) -> None:
        if self.input_resolution < 8 or self.input_resolution & (self.input_resolution - 1):
            raise ValueError(f"input_resolution must be a power of two ≥ 8, got {self.input_resolution}")
        if min(self.channels, self.high_channels) < 1 or self.blocks < 0 or self.high_blocks < 0:
            raise ValueError("enhancer widths must be at least 1 and block counts at least 0")

    @property
    def output_resolution(self) -> int:
        return SCALE * self.input_resolution


ENHANCER_PRESETS: dict[str, EnhancerConfig] = {
    "tiny": EnhancerConfig(teacher_preset="tiny", input_resolution=64, channels=16, blocks=1, high_channels=8, high_blocks=1),
    "cpu128": EnhancerConfig(teacher_preset="cpu128", input_resolution=128, channels=32, blocks=2, high_channels=16, high_blocks=1),
    "paper256": EnhancerConfig(teacher_preset="paper256", input_resolution=256, channels=64, blocks=4, high_channels=32, high_blocks=2),
    "paper512": EnhancerConfig(teacher_preset="paper512", input_resolution=512, channels=64, blocks=4, high_channels=32, high_blocks=2),
}


def enhancer_config(teacher_preset: str) -> EnhancerConfig:
    """The enhancer of the named teacher preset (its input resolution is that teacher's)."""
    if teacher_preset not in ENHANCER_PRESETS:
        raise ValueError(f"no enhancer for teacher preset {teacher_preset!r} (known: {', '.join(ENHANCER_PRESETS)})")
    config = ENHANCER_PRESETS[teacher_preset]
    if config.input_resolution != BASE_PRESETS[teacher_preset].resolution:  # a preset edited on one side only
        raise ValueError(f"enhancer preset {teacher_preset!r} reads {config.input_resolution} px, but that teacher draws other sizes")
    return config


class EnhancerOutput(NamedTuple):
    rgb: Tensor  # B×3×2r×2r, about [0, 1] (clamp for display)
    alpha: Tensor  # B×1×2r×2r, about [0, 1]


class Enhancer(nn.Module):
    """Teacher rgb B×3×r×r and alpha B×1×r×r in [0, 1] -> EnhancerOutput at 2r: bicubic upsample plus a learned residual."""

    def __init__(self, *, config: EnhancerConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = WSConv2d(IMAGE_CHANNELS, config.channels, 3)
        self.low = nn.Sequential(*(ResBlock2D(in_channels=config.channels, out_channels=config.channels) for _ in range(config.blocks)))
        self.merge = ResBlock2D(in_channels=config.channels + IMAGE_CHANNELS, out_channels=config.high_channels)
        self.high = nn.Sequential(
            *(ResBlock2D(in_channels=config.high_channels, out_channels=config.high_channels) for _ in range(config.high_blocks))
        )
        self.head_norm = norm(config.high_channels)
        self.head = nn.Conv2d(config.high_channels, IMAGE_CHANNELS, 3, padding=1)  # plain conv: it must start at zero
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, rgb: Tensor, alpha: Tensor) -> EnhancerOutput:
        """rgb: B×3×r×r, alpha: B×1×r×r, in [0, 1] (the teacher's output)."""
        image = torch.cat([rgb, alpha], dim=1)  # B×3×r×r, B×1×r×r -> B×4×r×r
        upsampled = bicubic_upsample(image)  # -> B×4×2r×2r
        x = self.low(self.stem(image * 2 - 1))  # B×4×r×r -> B×c×r×r
        x = F.interpolate(x, scale_factor=float(SCALE), mode="nearest")  # -> B×c×2r×2r
        x = self.merge(torch.cat([x, upsampled * 2 - 1], dim=1))  # B×(c+4)×2r×2r -> B×c'×2r×2r
        residual = self.head(F.relu(self.head_norm(self.high(x))))  # -> B×4×2r×2r
        enhanced = upsampled + residual
        high_rgb, high_alpha = enhanced.split([3, 1], dim=1)  # B×4×2r×2r -> B×3×2r×2r, B×1×2r×2r
        return EnhancerOutput(rgb=high_rgb, alpha=high_alpha)


def parameter_count(model: nn.Module) -> int:
    """Parameters of a module (works on the meta device)."""
    return sum(math.prod(p.shape) for p in model.parameters())


# -- checkpoints: the frozen teacher it reads, and its own (written by models/training/train_enhancer.py) ----------------


class FrozenTeacher(NamedTuple):
    model: BaseModel  # in eval mode, requires_grad off
    preset: str
    path: str
    digest: str  # state_digest of the generator's weights: equal digests, the same teacher

    def describe(self) -> dict[str, Any]:
        """What an enhancer checkpoint records of its teacher."""
        return {"preset": self.preset, "path": self.path, "digest": self.digest, "resolution": self.model.config.resolution}


def load_frozen_teacher(path: Path, *, expect_preset: str | None = None) -> FrozenTeacher:
    """A `megalive-train base` checkpoint's generator, frozen; anything else (another kind, another preset than
    ``expect_preset``, a teacher that needs its poses given, a preset without an enhancer) raises TrainingError (one line)."""
    checkpoint = load_checkpoint(Path(path))
    check_kind(checkpoint, BASE_KIND, where=f"teacher {path}")
    preset = str(checkpoint.get("train_config", {}).get("preset"))
    if expect_preset is not None and preset != expect_preset:
        raise TrainingError(f"teacher {path} is a base model of preset {preset!r}, not {expect_preset!r}")
    if preset not in ENHANCER_PRESETS:
        raise TrainingError(f"teacher {path} has preset {preset!r}, which has no enhancer (known: {', '.join(ENHANCER_PRESETS)})")
    model = base_model_from_checkpoint(checkpoint, path=Path(path))
    if model.config.pose_source == "given":
        raise TrainingError(f"teacher {path} reads head poses given by the caller (pose source 'given'); the enhancer drives it by images")
    return FrozenTeacher(
        model=model.eval().requires_grad_(False), preset=preset, path=str(path), digest=state_digest(checkpoint["generator"])
    )


class LoadedEnhancer(NamedTuple):
    enhancer: Enhancer  # in eval mode
    teacher: dict[str, Any]  # what it was trained on: {"preset", "path", "digest", "resolution"}
    step: int


def enhancer_from_checkpoint(checkpoint: dict[str, Any], *, path: Path, expect_teacher_preset: str | None = None) -> LoadedEnhancer:
    """The enhancer of a `megalive-train enhancer` checkpoint; anything else, or an enhancer trained for another teacher
    preset than ``expect_teacher_preset``, raises TrainingError (one line)."""
    check_kind(checkpoint, ENHANCER_KIND, where=str(path))
    teacher = dict(checkpoint.get("teacher") or {})
    preset = teacher.get("preset")
    if expect_teacher_preset is not None and preset != expect_teacher_preset:
        raise TrainingError(f"{path} is an enhancer for teacher preset {preset!r}, not {expect_teacher_preset!r}")
    try:
        config = EnhancerConfig(**checkpoint["model_config"])
    except (TypeError, KeyError, ValueError) as error:
        raise TrainingError(f"{path}: an enhancer config this code cannot build: {str(error).splitlines()[0]}") from None
    if config.teacher_preset != preset:
        raise TrainingError(f"{path}: its enhancer reads teacher preset {config.teacher_preset!r} but records teacher {preset!r}")
    enhancer = Enhancer(config=config)
    load_state(enhancer, checkpoint, "enhancer", path=path)
    return LoadedEnhancer(enhancer=enhancer.eval(), teacher=teacher, step=int(checkpoint.get("step", 0)))


def load_enhancer(path: Path, *, expect_teacher_preset: str | None = None) -> LoadedEnhancer:
    return enhancer_from_checkpoint(load_checkpoint(Path(path)), path=Path(path), expect_teacher_preset=expect_teacher_preset)


def describe(config: EnhancerConfig) -> dict[str, Any]:
    """The config with its output resolution, for config.json and --dry-run."""
    return {**asdict(config), "output_resolution": config.output_resolution}
