"""The MegaPortraits base model (the teacher, DESIGN.md §4.1), assembled from its components:

    source ─E_app─▶ v_s, e_s          source ─E_mtn─▶ R_s, t_s, z_s      driver ─E_mtn─▶ R_d, t_d, z_d
    v_s ─warp(R_s, t_s, W_s→c(e_s, z_s))─▶ G3D ─▶ v_c ─warp(R_d, t_d, W_c→d(e_s, z_d))─▶ v_d ─G2D─▶ rgb, alpha

One file per component: ``appearance.py`` (E_app), ``motion.py`` (E_mtn), ``warping.py`` (rigid
grids, W_s→c and W_c→d), ``volume.py`` (G3D), ``decoder.py`` (projection and G2D), and
``teacher_blocks.py`` (the weight-standardised GroupNorm blocks they share).

Presets (``base_config``) scale one architecture. The paper fixes v_s = 96×16×64×64 at 512 px, e_s =
512×4×4 (DESIGN.md) and z = 512; ``paper512`` keeps those. Block counts and the widths of the warp
generators, G3D and G2D are this project's choices, not figures from the paper; ``paper256`` is the
same network at 256 px with the image-to-volume ratio kept (v_s 96×16×32×32).

Parameter counts per component, measured by ``parameter_counts`` (the paper's own figures are not
reproduced here: we do not have them reliably):

    preset     px    v_s                  E_app       E_mtn       W_s→c       W_c→d         G3D         G2D        total
    tiny       64    8×4×16×16           44,224      20,150      49,051      49,051      21,352      29,460      213,288
    cpu128     128   16×8×32×32       1,596,480   1,264,838     686,259     686,259     367,184     758,340    5,359,360
    paper256   256   96×16×32×32     31,679,168  11,444,486  11,999,939  11,999,939  13,185,504  22,174,084  102,483,120
    paper512   512   96×16×64×64     31,679,168  11,444,486  12,279,139  12,279,139  13,185,504  22,174,084  103,041,520

E_app includes e_s's trunk (ResNet-50 in the paper presets: most of E_app); G2D includes the
C·D -> channels projection. (``tests/models/test_teacher.py`` checks the table against the code.)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from models.megaportraits.appearance import Appearance, AppearanceEncoder
from models.megaportraits.decoder import DecodedImage, Decoder
from models.megaportraits.head_pose import head_pose_config
from models.megaportraits.motion import POSE_SOURCES, HeadPose, Motion, MotionEncoder, PoseSource
from models.megaportraits.volume import VolumeGenerator
from models.megaportraits.warping import WarpGenerator, canonical_to_driver_grid, identity_grid, source_to_canonical_grid, warp


def _power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


@dataclass(frozen=True)
class BaseConfig:
    resolution: int  # source, driver and output height = width
    volume_channels: int  # C of v_s (paper 96)
    volume_depth: int  # D of v_s (paper 16)
    volume_size: int  # S of v_s (paper 64 at 512 px)
    appearance_channels: tuple[int, ...]  # E_app: stem width, then one per stride-2 ResBlock down to S
    volume_blocks: int  # 3-D ResBlocks on v_s in E_app
    descriptor_channels: int  # E of e_s (paper 512)
    descriptor_size: int  # k of e_s (DESIGN: 4)
    descriptor_stem: int  # e_s's ResNet trunk: stem width, stage widths, blocks per stage, bottlenecks
    descriptor_widths: tuple[int, ...]
    descriptor_blocks: tuple[int, ...]
    descriptor_bottleneck: bool
    motion_resolution: int  # E_mtn reads the image resized to this
    motion_stem: int  # E_mtn's ResNet trunk (basic blocks)
    motion_widths: tuple[int, ...]
    motion_blocks: tuple[int, ...]
    expression_dim: int  # Z of z (paper 512; EMOPortraits 128 with dropout)
    warp_channels: tuple[int, ...]  # W_s→c and W_c→d: widths at k, 2k, …, S
    warp_start_depth: int  # depth of the warp generators' first volume; doubled per stage up to D
    volume_generator_channels: tuple[int, ...]  # G3D: width of U-Net level i (at S/2^i)
    decoder_channels: tuple[int, ...]  # G2D: widths at S, 2S, …, resolution
    decoder_blocks: int  # G2D ResBlocks at S
    expression_dropout: float = 0.0
    pose_source: PoseSource = "learned"  # pretrained (frozen head-pose network), learned by E_mtn, or given by the caller (motion.py)
    head_pose_preset: str = ""  # the frozen head-pose network's preset (head_pose.py) with pose_source "pretrained"
    volume_generator_blocks: int = 1  # ResBlocks per G3D level and direction
    feature_crops: bool = False  # E_mtn's z also reads eye and mouth crops placed by the frozen head pose (motion.py)
    decoder_expression: bool = False  # G2D's GroupNorms read the driver's z (decoder.py; this project's addition)

    def __post_init__(self) -> None:
        if not _power_of_two(self.resolution):
            raise ValueError(f"resolution must be a power of two, got {self.resolution}")
        if self.volume_size * 2 ** (len(self.appearance_channels) - 1) != self.resolution:
            raise ValueError(
                f"appearance_channels: {len(self.appearance_channels) - 1} ×2 downsamplings do not take "
                f"{self.resolution} px to volume_size {self.volume_size}"
            )
        if self.volume_size * 2 ** (len(self.decoder_channels) - 1) != self.resolution:
            raise ValueError(
                f"decoder_channels: {len(self.decoder_channels) - 1} ×2 upsamplings do not take "
                f"volume_size {self.volume_size} to {self.resolution} px"
            )
        if self.descriptor_size * 2 ** (len(self.warp_channels) - 1) != self.volume_size:
            raise ValueError(
                f"warp_channels: {len(self.warp_channels) - 1} ×2 stages do not take descriptor_size "
                f"{self.descriptor_size} to volume_size {self.volume_size}"
            )
        depth_doublings = math.log2(self.volume_depth / self.warp_start_depth) if self.warp_start_depth >= 1 else -1.0
        if not (depth_doublings.is_integer() and 0 <= depth_doublings <= len(self.warp_channels) - 1):
            raise ValueError(
                f"warp_start_depth {self.warp_start_depth} must reach volume_depth {self.volume_depth} "
                f"by doubling within {len(self.warp_channels) - 1} stages"
            )
        if self.volume_size % 2 ** (len(self.volume_generator_channels) - 1):
            raise ValueError(f"volume_size {self.volume_size} cannot be halved {len(self.volume_generator_channels) - 1} times for G3D")
        for name in ("descriptor", "motion"):
            widths, blocks = getattr(self, f"{name}_widths"), getattr(self, f"{name}_blocks")
            if not widths or len(widths) != len(blocks) or min(blocks) < 1:
                raise ValueError(f"{name}_widths and {name}_blocks need the same, non-zero length and counts ≥ 1")
        if self.descriptor_bottleneck and any(width % 4 for width in self.descriptor_widths):
            raise ValueError("bottleneck descriptor widths must be divisible by 4")
        if not 0.0 <= self.expression_dropout < 1.0:
            raise ValueError(f"expression_dropout must be in [0, 1), got {self.expression_dropout}")
        if self.pose_source not in POSE_SOURCES:
            raise ValueError(f"pose_source must be one of {', '.join(POSE_SOURCES)}, got {self.pose_source!r}")
        if (self.pose_source == "pretrained") != bool(self.head_pose_preset):
            raise ValueError("head_pose_preset names the frozen head-pose network of pose_source 'pretrained', and only of it")
        if self.head_pose_preset:
            head_pose_config(self.head_pose_preset)  # raises on an unknown preset
        if self.feature_crops and self.pose_source != "pretrained":
            raise ValueError("feature_crops are placed by the frozen head-pose network: they need pose_source 'pretrained'")

    @property
    def volume_shape(self) -> tuple[int, int, int, int]:
        """v_s per sample: C×D×S×S."""
        return (self.volume_channels, self.volume_depth, self.volume_size, self.volume_size)

    @property
    def descriptor_shape(self) -> tuple[int, int, int]:
        """e_s per sample: E×k×k."""
        return (self.descriptor_channels, self.descriptor_size, self.descriptor_size)


_RESNET50 = dict(descriptor_stem=64, descriptor_widths=(256, 512, 1024, 2048), descriptor_blocks=(3, 4, 6, 3), descriptor_bottleneck=True)
_RESNET18 = dict(motion_stem=64, motion_widths=(64, 128, 256, 512), motion_blocks=(2, 2, 2, 2))

BASE_PRESETS: dict[str, BaseConfig] = {
    # 64 px, for tests: builds and runs a forward and backward pass in well under a second on CPU.
    "tiny": BaseConfig(
        resolution=64, volume_channels=8, volume_depth=4, volume_size=16,
        appearance_channels=(16, 16, 32), volume_blocks=1,
        descriptor_channels=16, descriptor_size=2,
        descriptor_stem=8, descriptor_widths=(16, 32), descriptor_blocks=(1, 1), descriptor_bottleneck=False,
        motion_resolution=64, motion_stem=8, motion_widths=(16, 32), motion_blocks=(1, 1),
        expression_dim=16, warp_channels=(32, 16, 16, 8), warp_start_depth=1,
        volume_generator_channels=(8, 16), decoder_channels=(32, 16, 8), decoder_blocks=1,
    ),
    # 128 px, trainable on two CPU cores; z of 128 with dropout, as EMOPortraits.
    "cpu128": BaseConfig(
        resolution=128, volume_channels=16, volume_depth=8, volume_size=32,
        appearance_channels=(32, 64, 128), volume_blocks=2,
        descriptor_channels=128, descriptor_size=4,
        descriptor_stem=32, descriptor_widths=(32, 64, 128, 256), descriptor_blocks=(1, 1, 1, 1), descriptor_bottleneck=False,
        motion_resolution=128, motion_stem=32, motion_widths=(32, 64, 128, 256), motion_blocks=(1, 1, 1, 1),
        expression_dim=128, expression_dropout=0.2, warp_channels=(128, 64, 32, 16), warp_start_depth=2,
        volume_generator_channels=(16, 32, 64), decoder_channels=(128, 64, 32), decoder_blocks=2,
    ),
    # The paper's widths at 256 px (1:8 image-to-volume ratio kept).
    "paper256": BaseConfig(
        resolution=256, volume_channels=96, volume_depth=16, volume_size=32,
        appearance_channels=(64, 128, 256, 512), volume_blocks=3,
        descriptor_channels=512, descriptor_size=4, **_RESNET50,
        motion_resolution=256, **_RESNET18, expression_dim=512,
        warp_channels=(512, 256, 128, 64), warp_start_depth=4,
        volume_generator_channels=(96, 192, 384), decoder_channels=(512, 256, 128, 64), decoder_blocks=4,
    ),
    # The paper's base model: 512 px, v_s 96×16×64×64, e_s 512×4×4, z 512 (E_mtn reads 256 px).
    "paper512": BaseConfig(
        resolution=512, volume_channels=96, volume_depth=16, volume_size=64,
        appearance_channels=(64, 128, 256, 512), volume_blocks=3,
        descriptor_channels=512, descriptor_size=4, **_RESNET50,
        motion_resolution=256, **_RESNET18, expression_dim=512,
        warp_channels=(512, 256, 128, 64, 32), warp_start_depth=4,
        volume_generator_channels=(96, 192, 384), decoder_channels=(512, 256, 128, 64), decoder_blocks=4,
    ),
}  # fmt: skip


def base_config(
    preset: str,
    *,
    pose_source: PoseSource | None = None,
    head_pose_preset: str = "",
    feature_crops: bool = False,
    decoder_expression: bool = False,
) -> BaseConfig:
    """The named preset, optionally with another pose source ("pretrained" names its head-pose network's preset), E_mtn's
    feature crops and G2D's expression conditioning (crops asked for without the pretrained pose are refused by
    BaseConfig, not dropped)."""
    if preset not in BASE_PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(BASE_PRESETS)})")
    config = BASE_PRESETS[preset]
    if pose_source is not None:
        config = dataclasses.replace(config, pose_source=pose_source, head_pose_preset=head_pose_preset)
    return dataclasses.replace(config, feature_crops=feature_crops, decoder_expression=decoder_expression)


class Warped(NamedTuple):
    volume: Tensor  # B×C×D×S×S
    grid: Tensor  # B×D×S×S×3, the sampling grid that made it


class BaseOutput(NamedTuple):
    """Everything one pass computes; a NamedTuple so that tracing and ONNX export see tuples."""

    rgb: Tensor  # B×3×H×W in [0, 1]
    alpha: Tensor  # B×1×H×W in [0, 1], the foreground mask
    source_volume: Tensor  # v_s: B×C×D×S×S
    canonical_volume: Tensor  # v_c = G3D(v_s warped to canonical): B×C×D×S×S
    driver_volume: Tensor  # v_c warped to the driver: B×C×D×S×S
    descriptor: Tensor  # e_s: B×E×k×k
    source_motion: Motion
    driver_motion: Motion
    source_to_canonical: Tensor  # grid B×D×S×S×3
    canonical_to_driver: Tensor  # grid B×D×S×S×3


class BaseModel(nn.Module):
    """The teacher. ``forward(source, driver)`` reenacts the source with the driver's motion; the
    steps are public so that callers can encode a source once and drive it many times."""

    def __init__(self, *, config: BaseConfig) -> None:
        super().__init__()
        self.config = config
        self.appearance_encoder = AppearanceEncoder(
            channels=config.appearance_channels,
            volume_channels=config.volume_channels,
            volume_depth=config.volume_depth,
            volume_blocks=config.volume_blocks,
            descriptor_stem=config.descriptor_stem,
            descriptor_widths=config.descriptor_widths,
            descriptor_blocks=config.descriptor_blocks,
            descriptor_bottleneck=config.descriptor_bottleneck,
            descriptor_channels=config.descriptor_channels,
            descriptor_size=config.descriptor_size,
        )
        self.motion_encoder = MotionEncoder(
            input_resolution=config.motion_resolution,
            stem_channels=config.motion_stem,
            widths=config.motion_widths,
            blocks=config.motion_blocks,
            expression_dim=config.expression_dim,
            expression_dropout=config.expression_dropout,
            pose_source=config.pose_source,
            head_pose=head_pose_config(config.head_pose_preset) if config.head_pose_preset else None,
            feature_crops=config.feature_crops,
        )
        self.warp_to_canonical = self._warp_generator(config)  # W_s→c
        self.warp_to_driver = self._warp_generator(config)  # W_c→d
        self.volume_generator = VolumeGenerator(
            volume_channels=config.volume_channels,
            channels=config.volume_generator_channels,
            blocks_per_level=config.volume_generator_blocks,
        )  # G3D
        self.decoder = Decoder(
            volume_channels=config.volume_channels,
            volume_depth=config.volume_depth,
            channels=config.decoder_channels,
            blocks=config.decoder_blocks,
            condition_dim=config.expression_dim if config.decoder_expression else 0,
        )  # projection + G2D

    @staticmethod
    def _warp_generator(config: BaseConfig) -> WarpGenerator:
        return WarpGenerator(
            descriptor_channels=config.descriptor_channels,
            descriptor_size=config.descriptor_size,
            expression_dim=config.expression_dim,
            channels=config.warp_channels,
            start_depth=config.warp_start_depth,
            volume_depth=config.volume_depth,
            volume_size=config.volume_size,
        )

    def encode_appearance(self, source: Tensor) -> Appearance:
        """E_app: B×3×H×W in [0, 1] -> v_s B×C×D×S×S, e_s B×E×k×k."""
        return self.appearance_encoder(source)

    def encode_motion(self, image: Tensor, *, pose: HeadPose | None = None) -> Motion:
        """E_mtn: B×3×H×W in [0, 1] -> R, t, z (``pose`` only with pose_source "given")."""
        return self.motion_encoder(image, pose=pose)

    def _identity_grid(self, like: Tensor) -> Tensor:
        depth, height, width = like.shape[-3:]
        return identity_grid(depth=depth, height=height, width=width, device=like.device, dtype=like.dtype)  # D×S×S×3

    def to_canonical(self, volume: Tensor, *, descriptor: Tensor, motion: Motion) -> Warped:
        """v_s -> canonical (before G3D): pull at k_s R_s (p + W_s→c(e_s, z_s)) + t_s."""
        deltas = self.warp_to_canonical(descriptor, motion.expression)  # B×D×S×S×3
        grid = source_to_canonical_grid(
            self._identity_grid(volume), deltas, rotation=motion.rotation, translation=motion.translation, scale=motion.scale
        )
        return Warped(volume=warp(volume, grid), grid=grid)

    def to_driver(self, volume: Tensor, *, descriptor: Tensor, motion: Motion) -> Warped:
        """canonical -> driver: pull at R_dᵀ (q - t_d) / k_d + W_c→d(e_s, z_d)."""
        deltas = self.warp_to_driver(descriptor, motion.expression)  # B×D×S×S×3
        grid = canonical_to_driver_grid(
            self._identity_grid(volume), deltas, rotation=motion.rotation, translation=motion.translation, scale=motion.scale
        )
        return Warped(volume=warp(volume, grid), grid=grid)

    def decode(self, volume: Tensor, *, motion: Motion) -> DecodedImage:
        """Projection + G2D: the driver volume B×C×D×S×S -> rgb, alpha (G2D reads the driver's z when configured so)."""
        return self.decoder(volume, motion.expression if self.config.decoder_expression else None)

    def render(self, appearance: Appearance, *, source_motion: Motion, driver_motion: Motion) -> BaseOutput:
        """The source's appearance with the driver's pose and expression."""
        to_canonical = self.to_canonical(appearance.volume, descriptor=appearance.descriptor, motion=source_motion)
        canonical = self.volume_generator(to_canonical.volume)  # G3D: B×C×D×S×S -> B×C×D×S×S
        to_driver = self.to_driver(canonical, descriptor=appearance.descriptor, motion=driver_motion)
        image = self.decode(to_driver.volume, motion=driver_motion)
        return BaseOutput(
            rgb=image.rgb,
            alpha=image.alpha,
            source_volume=appearance.volume,
            canonical_volume=canonical,
            driver_volume=to_driver.volume,
            descriptor=appearance.descriptor,
            source_motion=source_motion,
            driver_motion=driver_motion,
            source_to_canonical=to_canonical.grid,
            canonical_to_driver=to_driver.grid,
        )

    def forward(
        self, source: Tensor, driver: Tensor, *, source_pose: HeadPose | None = None, driver_pose: HeadPose | None = None
    ) -> BaseOutput:
        """source, driver: B×3×H×W in [0, 1] (poses only with pose_source "given")."""
        appearance = self.encode_appearance(source)
        source_motion = self.encode_motion(source, pose=source_pose)
        driver_motion = self.encode_motion(driver, pose=driver_pose)
        return self.render(appearance, source_motion=source_motion, driver_motion=driver_motion)


COMPONENTS: dict[str, str] = {
    "E_app": "appearance_encoder",
    "E_mtn": "motion_encoder",
    "W_s→c": "warp_to_canonical",
    "W_c→d": "warp_to_driver",
    "G3D": "volume_generator",
    "G2D": "decoder",
}


def parameter_counts(model: BaseModel) -> dict[str, int]:
    """Parameters per paper component (G2D includes the C·D -> channels projection); works on the meta device."""
    return {name: sum(math.prod(p.shape) for p in getattr(model, attribute).parameters()) for name, attribute in COMPONENTS.items()}
