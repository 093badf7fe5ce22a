"""The MegaPortraits real-time student (DESIGN.md §4.3): what the server runs.

G(x_driver, avatar): a ResNet-18-style encoder of the driver frame, and a U-Net decoder whose every
normalisation is SPADE modulated by a learned per-avatar identity tensor (num_avatars×C_id×S×S,
S ≤ 64). The SPADE modulation convs run at min(S, layer resolution) and their scale/shift maps are
upsampled bilinearly, so their cost does not grow with the output size. All identity lives in those
tensors: enrolling an avatar appends one row (``add_avatars``) and trains only
``identity_parameters()``. The encoder's skip connections carry the driver's pose and expression
geometry to the decoder.

Shapes for the ``cpu256`` preset (B = batch):
    driver B×3×256×256 -> stem B×16×128×128 -> B×32×64×64 -> B×64×32×32 -> B×96×16×16
    decoder 16² (96, SPADE) -> 32² (64, SPADE) -> 64² (32, SPADE) -> 128² (16, skip only)
    -> 3×3 conv + pixel shuffle -> rgb B×3×256×256, alpha B×1×256×256
The 128² stage has no SPADE block: at 2 CPU cores it would cost a quarter of the frame time
(measured: 32 vs 42 frames/s); identity is injected at 16²-64² where most of the work is.

``cpu512``: the same network on the driver area-downsampled to 256, then one stage back up:
    driver B×3×512×512 -> avg pool B×3×256×256 -> (cpu256's encoder and decoder) -> B×16×128×128
    -> bilinear ×2, 3×3 conv B×16×256×256 -> 3×3 conv + pixel shuffle -> rgb B×3×512×512, alpha B×1×512×512
The upsampling stage starts as bilinear upsampling (Dirac weights), so a trained cpu256 student loaded into it
(`megalive-train student --init`) draws from the first step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import ConvNormAct, DownBlock, IdentityHidden, ResBlock, SPADEResBlock, group_count, resize

MAX_IDENTITY_SIZE = 64
LEAKY_SLOPE = 0.2  # before the output head, as in SPADE-GAN's generator
REFINE_UPSAMPLING = "bilinear"  # nearest left 4-pixel steps at 512 px that 275 steps of training had not smoothed


@dataclass(frozen=True)
class StudentConfig:
    resolution: int  # output (and driver) height = width
    num_avatars: int
    identity_channels: int  # C_id of each avatar's identity tensor
    identity_size: int  # S: the identity tensor is C_id×S×S, S ≤ 64, a power of two
    encoder_channels: tuple[int, ...]  # stage k runs at resolution / 2^(k+1); stage 0 is the strided stem
    decoder_channels: tuple[int, ...]  # stage k runs at resolution / 2^(L-k) (coarsest first), L = stages
    encoder_blocks_per_stage: int = 1  # basic blocks per encoder stage after the stem (ResNet-18: 2)
    decoder_blocks: tuple[int, ...] = ()  # SPADE res blocks per decoder stage (coarsest first); () = one each
    spade_hidden_channels: int = 32  # hidden width of each SPADE's modulation convs
    identity_init_std: float = 1.0  # std of a fresh identity tensor's entries
    driver_downsample: int = 1  # the encoder reads the driver area-downsampled by this factor (1 or 2)
    refine_channels: int = 0  # 0, or a last upsampling stage of this width at H/2 (with driver_downsample 2)

    def __post_init__(self) -> None:
        stages = len(self.encoder_channels)
        if stages < 1 or len(self.decoder_channels) != stages:
            raise ValueError("encoder_channels and decoder_channels need the same, non-zero length")
        if self.num_avatars < 1:
            raise ValueError(f"num_avatars must be at least 1, got {self.num_avatars}")
        if self.resolution % 2**stages:
            raise ValueError(f"resolution {self.resolution} is not divisible by 2^{stages}")
        size = self.identity_size
        if not (1 <= size <= MAX_IDENTITY_SIZE and size & (size - 1) == 0):
            raise ValueError(f"identity_size must be a power of two ≤ {MAX_IDENTITY_SIZE}, got {size}")
        if self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution must be a power of two, got {self.resolution}")
        if self.encoder_blocks_per_stage < 1:
            raise ValueError("encoder_blocks_per_stage must be at least 1")
        if self.driver_downsample not in (1, 2) or (self.driver_downsample == 2) != (self.refine_channels > 0):
            raise ValueError("driver_downsample is 1, or 2 with refine_channels > 0 (the stage that brings H/4 back to H/2)")
        if self.decoder_blocks and (len(self.decoder_blocks) != stages or min(self.decoder_blocks) < 0 or self.decoder_blocks[0] < 1):
            raise ValueError("decoder_blocks needs one count ≥ 0 per decoder stage, the coarsest ≥ 1")

    def blocks_per_decoder_stage(self) -> tuple[int, ...]:
        return self.decoder_blocks or (1,) * len(self.decoder_channels)

    def decoder_resolutions(self) -> tuple[int, ...]:
        """Resolution of each decoder stage, coarsest first (the encoder's, mirrored)."""
        stages = len(self.decoder_channels)
        return tuple(self.resolution // self.driver_downsample // 2 ** (stages - k) for k in range(stages))


STUDENT_PRESETS: dict[str, StudentConfig] = {
    # 64 px, for tests: builds and runs in milliseconds.
    "tiny": StudentConfig(
        resolution=64, num_avatars=1, identity_channels=8, identity_size=16,
        encoder_channels=(8, 16, 32), decoder_channels=(32, 16, 8),
        spade_hidden_channels=16,
    ),
    # The shipped model: 256 px at ≥ 30 frames/s on two CPU cores with ONNX Runtime.
    "cpu256": StudentConfig(
        resolution=256, num_avatars=1, identity_channels=32, identity_size=32,
        encoder_channels=(16, 32, 64, 96), decoder_channels=(96, 64, 32, 16),
        decoder_blocks=(1, 1, 1, 0), spade_hidden_channels=32,  # no SPADE block at 128²: see the module docstring
    ),
    # 512 px out at ≥ 30 frames/s on two CPU cores: cpu256's encoder and decoder on the driver read at 256, then one
    # cheap stage back up (as LivePortrait's generator decodes at a quarter and upsamples in its last stages).
    "cpu512": StudentConfig(
        resolution=512, num_avatars=1, identity_channels=32, identity_size=32,
        encoder_channels=(16, 32, 64, 96), decoder_channels=(96, 64, 32, 16),
        decoder_blocks=(1, 1, 1, 0), spade_hidden_channels=32, driver_downsample=2, refine_channels=16,
    ),
}  # fmt: skip


def student_config(preset: str, *, num_avatars: int) -> StudentConfig:
    """The named preset with ``num_avatars`` identity tensors."""
    if preset not in STUDENT_PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(STUDENT_PRESETS)})")
    if num_avatars < 1:
        raise ValueError(f"num_avatars must be at least 1, got {num_avatars}")
    return dataclasses.replace(STUDENT_PRESETS[preset], num_avatars=num_avatars)


class StudentOutput(NamedTuple):
    """A NamedTuple (not a dataclass) so that torch.onnx.export sees a plain tuple."""

    rgb: Tensor  # B×3×H×W in [0, 1]
    alpha: Tensor  # B×1×H×W in [0, 1]


class DriverEncoder(nn.Module):
    """ResNet-18-style encoder: strided stem, then one DownBlock (+ ResBlocks) per stage.

    Returns every stage's features, finest first: the last is the bottleneck, the others skips.
    """

    def __init__(self, *, channels: tuple[int, ...], blocks_per_stage: int, driver_downsample: int = 1) -> None:
        super().__init__()
        self.driver_downsample = driver_downsample
        stem = ConvNormAct(in_channels=3, out_channels=channels[0], stride=2)
        stages: list[nn.Module] = [stem]
        for in_channels, out_channels in zip(channels[:-1], channels[1:]):
            blocks: list[nn.Module] = [DownBlock(in_channels=in_channels, out_channels=out_channels)]
            blocks += [ResBlock(in_channels=out_channels, out_channels=out_channels) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, driver: Tensor) -> list[Tensor]:
        features = []
        x = driver * 2 - 1  # [0, 1] -> [-1, 1]
        if self.driver_downsample > 1:  # B×3×H×W -> B×3×H/f×W/f
            x = F.avg_pool2d(x, kernel_size=self.driver_downsample)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class IdentityDecoder(nn.Module):
    """U-Net decoder: every stage is SPADE res blocks conditioned on the avatar's identity tensor.

    Stage k > 0: 1×1 conv to this stage's channels (at the coarser resolution, where it is cheap),
    nearest ×2 upsampling, plus the encoder's skip features at this resolution, then SPADE res
    blocks. The identity tensor enters each stage at min(S, stage resolution): average-pooled when
    the stage is coarser than S, and the SPADEs upsample their scale/shift when it is finer.
    """

    def __init__(self, *, config: StudentConfig) -> None:
        super().__init__()
        encoder_channels, decoder_channels = config.encoder_channels, config.decoder_channels
        self.identity_size = config.identity_size
        self.stage_resolutions = config.decoder_resolutions()
        self.bottleneck = nn.Conv2d(encoder_channels[-1], decoder_channels[0], 1)  # no-op-sized when equal
        self.reduce = nn.ModuleList()  # stage k > 0: decoder_channels[k-1] -> decoder_channels[k]
        self.skip = nn.ModuleList()  # stage k > 0: encoder skip -> decoder_channels[k] (1×1)
        self.hidden = nn.ModuleList()
        self.stages = nn.ModuleList()
        stage_specs = zip(self.stage_resolutions, decoder_channels, config.blocks_per_decoder_stage())
        for stage, (resolution, channels, count) in enumerate(stage_specs):
            if stage > 0:
                self.reduce.append(nn.Conv2d(decoder_channels[stage - 1], channels, 1))
                self.skip.append(nn.Conv2d(encoder_channels[-1 - stage], channels, 1))
            factor = max(1, resolution // config.identity_size)
            # A stage without blocks has no SPADE, so it reads no identity (nn.Identity: no parameters).
            self.hidden.append(
                IdentityHidden(condition_channels=config.identity_channels, hidden_channels=config.spade_hidden_channels)
                if count
                else nn.Identity()
            )
            self.stages.append(nn.ModuleList(
                SPADEResBlock(channels=channels, hidden_channels=config.spade_hidden_channels, upsample_factor=factor)
                for _ in range(count)
            ))  # fmt: skip
        # Normalise and leaky-ReLU before the head: the last stage ends in a sum (residual or skip),
        # and a plain ReLU there died in training (measured: 13 of 16 channels of the first shipped
        # model were never positive), which left a blurry average face.
        self.head_norm = nn.GroupNorm(group_count(decoder_channels[-1]), decoder_channels[-1])
        # With a downsampled driver, one stage from H/4 back to H/2: bilinear ×2 and a 3×3 conv, nothing else at that size.
        self.refine = nn.Conv2d(decoder_channels[-1], config.refine_channels, 3, padding=1) if config.refine_channels else None
        if self.refine is not None:  # starts as plain upsampling: a student of half the size, loaded into it, still draws
            nn.init.dirac_(self.refine.weight)
            nn.init.zeros_(self.refine.bias)
        # rgb + alpha at full resolution: 3×3 conv to 4·2·2 channels at H/2, then pixel shuffle
        # (cheaper on CPU than upsampling the features and convolving at H).
        self.head = nn.Conv2d(config.refine_channels or decoder_channels[-1], 4 * 2 * 2, 3, padding=1)

    def forward(self, encoder_features: list[Tensor], identity: Tensor) -> Tensor:
        """encoder_features: finest first; identity: B×C_id×S×S. Returns logits B×4×H×W."""
        x = self.bottleneck(encoder_features[-1])
        for stage, (resolution, hidden, blocks) in enumerate(zip(self.stage_resolutions, self.hidden, self.stages)):
            if stage > 0:
                x = resize(self.reduce[stage - 1](x), factor=2, mode="nearest")  # B×C'×r/2×r/2 -> B×C×r×r
                x = x + self.skip[stage - 1](encoder_features[-1 - stage])  # + B×C×r×r
            if not blocks:
                continue
            condition = identity
            if resolution < self.identity_size:  # B×C_id×S×S -> B×C_id×r×r
                condition = F.avg_pool2d(identity, kernel_size=self.identity_size // resolution)
            hidden_map = hidden(condition)  # B×C_hidden×min(S,r)×min(S,r)
            for block in blocks:
                x = block(x, hidden_map)
        x = F.leaky_relu(self.head_norm(x), LEAKY_SLOPE)
        if self.refine is not None:  # B×C×H/4×W/4 -> B×C_refine×H/2×W/2
            x = F.leaky_relu(self.refine(resize(x, factor=2, mode=REFINE_UPSAMPLING)), LEAKY_SLOPE)
        logits = self.head(x)  # B×16×H/2×W/2
        return F.pixel_shuffle(logits, 2)  # B×(4·2·2)×H/2×W/2 -> B×4×H×W


class Student(nn.Module):
    def __init__(self, *, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        shape = (config.num_avatars, config.identity_channels, config.identity_size, config.identity_size)
        self.identity = nn.Parameter(torch.randn(shape) * config.identity_init_std)  # N×C_id×S×S
        self.encoder = DriverEncoder(
            channels=config.encoder_channels,
            blocks_per_stage=config.encoder_blocks_per_stage,
            driver_downsample=config.driver_downsample,
        )
        self.decoder = IdentityDecoder(config=config)

    @property
    def num_avatars(self) -> int:
        return self.identity.shape[0]

    def identity_parameters(self) -> list[nn.Parameter]:
        """The parameters that hold identity: train only these to enrol a new avatar."""
        return [self.identity]

    @torch.no_grad()
    def add_avatars(self, count: int) -> None:
        """Append ``count`` identity rows: the mean identity plus small noise (a neutral starting point)."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        old = self.identity.detach()
        noise = torch.randn((count, *old.shape[1:]), dtype=old.dtype, device=old.device) * 0.1 * self.config.identity_init_std
        fresh = old.mean(dim=0, keepdim=True) + noise  # 1×C_id×S×S + count×C_id×S×S
        # A new Parameter: optimisers holding the old one must be rebuilt (enrolment makes its own).
        self.identity = nn.Parameter(torch.cat([old, fresh], dim=0), requires_grad=self.identity.requires_grad)
        self.config = dataclasses.replace(self.config, num_avatars=self.num_avatars)

    def forward(self, driver: Tensor, avatar: Tensor) -> StudentOutput:
        """driver: B×3×H×W in [0, 1]; avatar: B int64 indices into the identity tensors."""
        return self.decode(self.encoder(driver), avatar)

    def decode(self, driving_code: list[Tensor], avatar: Tensor) -> StudentOutput:
        """The identity decoder on a driving code: the encoder's features, finest first."""
        return self.decode_identity(driving_code, self.identity[avatar])  # N×C_id×S×S -> B×C_id×S×S

    def drive(self, driver: Tensor, identity: Tensor) -> StudentOutput:
        """Model contract v2: driver B×3×H×W in [0, 1] and the avatars' identity tensors B×C_id×S×S themselves
        (from the avatar bank, or the identity embedder), not indices into this student's own."""
        return self.decode_identity(self.encoder(driver), identity)

    def decode_identity(self, driving_code: list[Tensor], identity: Tensor) -> StudentOutput:
        logits = self.decoder(driving_code, identity)  # B×4×H×W
        rgb_logits, alpha_logits = logits.split([3, 1], dim=1)  # -> B×3×H×W, B×1×H×W
        return StudentOutput(rgb=torch.sigmoid(rgb_logits), alpha=torch.sigmoid(alpha_logits))


class IdentityInputStudent(nn.Module):
    """The student with model contract v2's inputs, what export writes for an enrollable model:
    forward(driver B×3×H×W, identity B×C_id×S×S) = Student.drive."""

    def __init__(self, *, student: Student) -> None:
        super().__init__()
        self.student = student
        self.config = student.config

    def forward(self, driver: Tensor, identity: Tensor) -> StudentOutput:
        return self.student.drive(driver, identity)


def parameter_count(module: nn.Module) -> int:
    return sum(math.prod(parameter.shape) for parameter in module.parameters())
