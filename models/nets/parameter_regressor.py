"""A small parameter regressor: from a SyntheticHeads-style image, the renderer's own parameters back.

`megalive-train eval` measures motion and identity with it (the benchmark's stand-in for a pose
estimator and a face-recognition network, which we cannot load here): a model output's predicted
pose and ARKit controls against the driver's true ones, and its predicted identity against the
avatar's true one. It is trained on renders (`megalive-train regressor`, models/training/train_regressor.py) and reads every image
composited on white by its own mask (the foreground), downsampled to ``RegressorConfig.resolution``,
because the teacher does not model the background. A random blur during training keeps it usable on
soft model outputs; its error on the ground-truth renders themselves (the floor) is reported beside
every figure it makes.

Targets, per image:
    pose        yaw, pitch, roll (radians)
    expression  the 52 ARKit controls in [0, 1]
    identity    IDENTITY_FIELDS (face shape, features and colours; not light, clothes or background),
                standardised by the identity prior's mean and spread, so errors are in standard deviations
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from contract.arkit import NUM_BLENDSHAPES
from models.blocks import ConvNormAct, DownBlock, resize_square
from models.checkpoints import REGRESSOR_KIND, checkpoint_kind, kind_found, load_checkpoint
from models.data.heads import HeadMotion, Identity, SyntheticHeads, sample_identities, sample_motions
from models.data.synthetic_pairs import derived_seed
from models.training.common import TrainingError

# The face and hair: what a face-recognition network would call identity (light, clothes and background are not).
IDENTITY_FIELDS = (
    "head_width",
    "head_height",
    "head_depth",
    "chin_length",
    "jaw_taper",
    "eye_spacing",
    "eye_height",
    "eye_width",
    "eye_opening",
    "eye_tilt",
    "iris_size",
    "brow_height",
    "brow_thickness",
    "brow_arch",
    "nose_length",
    "nose_width",
    "nose_prominence",
    "mouth_height",
    "mouth_width",
    "upper_lip",
    "lower_lip",
    "skin_rgb",
    "lip_rgb",
    "iris_rgb",
    "hair_rgb",
    "hair_amount",
    "hairline",
    "hair_volume",
    "hair_length",
)


def identity_features(identity: Identity) -> Tensor:
    """IDENTITY_FIELDS of a batch of identities, flattened: B×F (F = 37)."""
    return torch.cat([getattr(identity, name).reshape(len(identity), -1).float() for name in IDENTITY_FIELDS], dim=1)


def on_white(rgb: Tensor, alpha: Tensor) -> Tensor:
    """The foreground composited on white: B×3×H×W, B×1×H×W -> B×3×H×W."""
    return rgb * alpha + (1 - alpha)


@dataclass(frozen=True)
class RegressorConfig:
    resolution: int = 64  # input side; images are area-resized to it
    stem: int = 24  # a stride-2 conv: 64 -> 32 px
    channels: tuple[int, ...] = (32, 64, 128, 160)  # a stride-2 ResBlock each: 32 -> 2 px
    hidden: int = 256


class RegressedParameters(NamedTuple):
    pose: Tensor  # B×3: yaw, pitch, roll in radians
    expression: Tensor  # B×52: ARKit controls
    identity: Tensor  # B×F: standardised IDENTITY_FIELDS


class ParameterRegressor(nn.Module):
    def __init__(self, *, config: RegressorConfig, identity_mean: Tensor, identity_std: Tensor) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("identity_mean", identity_mean.clone().float())  # F
        self.register_buffer("identity_std", identity_std.clone().float())  # F
        widths = (config.stem, *config.channels)
        self.stem = ConvNormAct(in_channels=3, out_channels=config.stem, stride=2)
        self.trunk = nn.Sequential(*(DownBlock(in_channels=a, out_channels=b) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        features = config.channels[-1]
        self.hidden = nn.Sequential(nn.Linear(features, config.hidden), nn.ReLU())
        self.pose_head = nn.Linear(config.hidden, 3)
        self.expression_head = nn.Linear(config.hidden, NUM_BLENDSHAPES)
        self.identity_head = nn.Linear(config.hidden, identity_mean.numel())

    def standardise(self, identity: Identity) -> Tensor:
        """True identities as the identity head's targets: B×F standardised features."""
        return (identity_features(identity).to(self.identity_mean.device) - self.identity_mean) / self.identity_std

    def prepare(self, foreground: Tensor) -> Tensor:
        """B×3×H×W foreground on white at any size -> B×3×r×r, area-resized (no aliasing from large outputs)."""
        return resize_square(foreground, self.config.resolution)

    def forward(self, foreground: Tensor) -> RegressedParameters:
        """foreground: B×3×H×W in [0, 1], composited on white."""
        x = self.prepare(foreground) * 2 - 1
        x = self.trunk(self.stem(x))  # B×C×2×2
        hidden = self.hidden(x.mean(dim=(2, 3)))  # B×hidden
        return RegressedParameters(
            pose=self.pose_head(hidden), expression=self.expression_head(hidden), identity=self.identity_head(hidden)
        )


@dataclass(frozen=True)
class ParameterErrors:
    rotation_deg: float  # mean |yaw, pitch, roll error| in degrees
    expression: float  # mean |ARKit control error| (controls in [0, 1])
    identity: float  # mean |standardised identity feature error| (in standard deviations of the identity prior)


def parameter_errors(predicted: RegressedParameters, motion: HeadMotion, identity_targets: Tensor) -> Tensor:
    """Per-image errors, B×3 (rotation degrees, expression, identity), against the true motion and standardised identity."""
    true_pose = torch.stack([motion.yaw, motion.pitch, motion.roll], dim=1).to(predicted.pose)
    rotation = (predicted.pose - true_pose).abs().mean(dim=1) * (180 / math.pi)
    expression = (predicted.expression - motion.expression.to(predicted.expression)).abs().mean(dim=1)
    identity = (predicted.identity - identity_targets.to(predicted.identity)).abs().mean(dim=1)
    return torch.stack([rotation, expression, identity], dim=1)


def errors_from_means(means: Tensor) -> ParameterErrors:
    """A 3-vector of mean errors (parameter_errors' columns) -> ParameterErrors."""
    return ParameterErrors(rotation_deg=float(means[0]), expression=float(means[1]), identity=float(means[2]))


def identity_prior(seed: int, count: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean and spread of identity_features under the identity prior (a spread of 0, e.g. a constant, becomes 1)."""
    features = identity_features(sample_identities(count, generator=torch.Generator().manual_seed(derived_seed(seed, "prior"))))
    std = features.std(dim=0)
    return features.mean(dim=0), torch.where(std > 1e-6, std, torch.ones_like(std))


def held_out_errors(model: ParameterRegressor, *, seed: int, resolution: int, count: int = 256) -> ParameterErrors:
    """The regressor's mean errors on fresh renders (random identities and motions from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    identity, motion = sample_identities(count, generator=generator), sample_motions(count, generator=generator)
    with torch.inference_mode():
        render = SyntheticHeads(resolution=resolution).render(identity, motion)
        errors = parameter_errors(model(on_white(render.rgb, render.alpha)), motion, model.standardise(identity))
    return errors_from_means(errors.mean(dim=0))


def load_regressor(path: Path) -> ParameterRegressor:
    """A trained regressor from its checkpoint; anything else raises TrainingError (one line)."""
    checkpoint: dict[str, Any] = load_checkpoint(Path(path))
    if checkpoint_kind(checkpoint) != REGRESSOR_KIND:
        raise TrainingError(
            f"{path} is not a parameter-regressor checkpoint (made by `megalive-train regressor`): {kind_found(checkpoint)}"
        )
    config = RegressorConfig(
        **{key: tuple(value) if isinstance(value, list) else value for key, value in checkpoint["model_config"].items()}
    )
    state = checkpoint["model"]
    model = ParameterRegressor(config=config, identity_mean=state["identity_mean"], identity_std=state["identity_std"])
    model.load_state_dict(state)
    return model.eval()
