"""A small parameter regressor: from a SyntheticHeads-style image, the renderer's own parameters back.

`megalive-train eval` measures motion and identity with it (the benchmark's stand-in for a pose
estimator and a face-recognition network): a model output's predicted pose and ARKit controls against
the driver's true ones, and its predicted identity against the avatar's true one. It is trained on
renders (`megalive-train regressor`, models/training/train_regressor.py) and reads every image
composited on white by its own mask (the foreground), because the teacher does not model the background.
A random blur during training keeps it usable on soft model outputs; its error on the ground-truth
renders themselves (the floor) is reported beside every figure it makes, and so is the error of
answering "all zero" for the ARKit controls on the same renders (the figure to beat: at 52 sparse
controls, zero is a strong answer).

How it reads an image (B×3×H×W, any size):
    whole image   area-resized to ``RegressorConfig.resolution`` (64 px): pose, identity, and the
                  68 landmarks that place the crops when none are given
    three crops   each eye (the brow above it included) and the mouth, sampled from the image at up to
                  ``crop_resolution`` px in the face's own frame: centred on the feature, turned by
                  the line between the eyes, scaled by their distance (FaceFrame), the right eye mirrored so
                  both eyes share one branch. Placed by the landmarks given or, without them, by its own
                  (the benchmark's way: an output in the wrong pose is read for the expression it shows).
The expression, pose and identity heads read the whole image's features and the three crops' together. Each ARKit
control is read in two parts: whether it is active (a classifier: the controls are sparse, 0 most of the time) and its
value were it active; the answer is the median those two describe (expression_median). One regression of the value
alone does worse: a squared loss answers the mean, worse than zero for the controls the image barely shows (the first
design scored 0.181 against 0.150 for answering zero); an absolute loss answers the median but learns too slowly from
sparse controls, stuck at 0 for all but the plainest ones; an absolute-loss head beside the two parts, on the same
features, scored 0.0161 on held-out clip frames against their median's 0.0122 (each trained 1,500 steps on 3,000
renders, half the default).

Targets, per image:
    pose        yaw, pitch, roll (radians)
    expression  the 52 ARKit controls in [0, 1] (in inference, expression_median's answer)
    identity    IDENTITY_FIELDS (face shape, features and colours; not light, clothes or background),
                standardised by the identity prior's mean and spread, so errors are in standard deviations
    landmarks   the 68 iBUG points (only to place the crops when none are given)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from contract.arkit import NUM_BLENDSHAPES
from contract.landmarks import NUM_LANDMARKS
from models.blocks import ConvNormAct, DownBlock, on_white, resize_square
from models.checkpoints import REGRESSOR_KIND, checkpoint_kind, kind_found, load_checkpoint
from models.data.heads import HeadMotion, Identity, SyntheticHeads, sample_clip_frames, sample_identities, sample_motions
from models.data.synthetic_pairs import derived_seed
from models.face_crops import CropBranch, FaceFrame, FeatureCrops, feature_crops
from models.training.common import TrainingError

# Checkpoints record the design they hold; those of the first design (the whole image at 64 px, no crops, its
# ARKit error worse than answering zero) carry none and are refused.
REGRESSOR_DESIGN = 2

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


# -- the network ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegressorConfig:
    resolution: int = 64  # the whole image's side; images are area-resized to it
    stem: int = 24  # a stride-2 conv: 64 -> 32 px
    channels: tuple[int, ...] = (32, 64, 128, 160)  # a stride-2 ResBlock each: 32 -> 2 px
    hidden: int = 256
    crop_resolution: int = 128  # crops are sampled from the image area-resized to this side when it is larger
    eye_size: tuple[int, int] = (24, 32)  # each eye's crop, height × width (EYE_CROP: 1.2 × 0.9 inter-ocular distances)
    mouth_size: tuple[int, int] = (32, 32)  # the mouth's crop (MOUTH_CROP: 1.2 × 1.2)
    crop_stem: int = 24  # each crop branch: a stride-2 conv, then a stride-2 ResBlock per crop_channels
    crop_channels: tuple[int, ...] = (48, 64)
    crop_features: int = 128  # each crop's features (flattened map -> linear)


class RegressedParameters(NamedTuple):
    pose: Tensor  # B×3: yaw, pitch, roll in radians
    expression: Tensor  # B×52: ARKit controls (in training: each control's value were it active, unclamped)
    identity: Tensor  # B×F: standardised IDENTITY_FIELDS
    landmarks: Tensor | None = None  # B×68×2: its own landmarks, pixels of the input image
    activity: Tensor | None = None  # B×52 logits: is each control active (above ACTIVE_CONTROL)?


# A control counts as active above this: the sampled motions' controls are exactly 0 when off (sparse random controls,
# clip events between blinks, gaze to the other side).
ACTIVE_CONTROL = 1e-3


def expression_median(value: Tensor, activity: Tensor) -> Tensor:
    """The ARKit answer from its two parts (B×52 each): the median of a control that is 0 with probability 1 - p
    (p = sigmoid(activity)) and otherwise spread evenly over [0, 2v] (v = the value, clamped to [0, 1]: the median of the
    active control). That is 0 while p ≤ ½ (a control more likely off than on), else v·(2p - 1)/p: the answer the
    absolute error, the benchmark's, rewards. (Answering v wherever p > ½ scores worse where the image leaves the
    control uncertain: 0.0145 against 0.0122 on held-out clip frames.)"""
    active = torch.sigmoid(activity)
    return value.clamp(0, 1) * ((2 * active - 1) / active).clamp(0, 1)


class ParameterRegressor(nn.Module):
    def __init__(self, *, config: RegressorConfig, identity_mean: Tensor, identity_std: Tensor) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("identity_mean", identity_mean.clone().float())  # F
        self.register_buffer("identity_std", identity_std.clone().float())  # F
        widths = (config.stem, *config.channels)
        self.stem = ConvNormAct(in_channels=3, out_channels=config.stem, stride=2)
        self.trunk = nn.Sequential(*(DownBlock(in_channels=a, out_channels=b) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        self.global_hidden = nn.Sequential(nn.Linear(config.channels[-1], config.hidden), nn.ReLU())
        self.landmark_head = nn.Linear(config.hidden, NUM_LANDMARKS * 2)
        crop = {"stem": config.crop_stem, "channels": config.crop_channels, "features": config.crop_features}
        self.eye_branch = CropBranch(size=config.eye_size, **crop)  # both eyes, the right one mirrored
        self.mouth_branch = CropBranch(size=config.mouth_size, **crop)
        self.hidden = nn.Sequential(nn.Linear(config.hidden + 3 * config.crop_features, config.hidden), nn.ReLU())
        self.pose_head = nn.Linear(config.hidden, 3)
        self.expression_head = nn.Linear(config.hidden, NUM_BLENDSHAPES)  # each control's value, were it active
        self.activity_head = nn.Linear(config.hidden, NUM_BLENDSHAPES)  # each control's odds of being active
        self.identity_head = nn.Linear(config.hidden, identity_mean.numel())

    def standardise(self, identity: Identity) -> Tensor:
        """True identities as the identity head's targets: B×F standardised features."""
        return (identity_features(identity).to(self.identity_mean.device) - self.identity_mean) / self.identity_std

    def prepare(self, foreground: Tensor) -> Tensor:
        """B×3×H×W foreground on white at any size -> B×3×r×r, area-resized (no aliasing from large outputs)."""
        return resize_square(foreground, self.config.resolution)

    def crops(self, foreground: Tensor, frame: FaceFrame) -> FeatureCrops:
        """The left eye's, the (mirrored) right eye's and the mouth's crops of B×3×S×S images, ``frame`` in their pixels."""
        config = self.config
        return feature_crops(
            foreground, frame, crop_resolution=config.crop_resolution, eye_size=config.eye_size, mouth_size=config.mouth_size
        )

    def forward(self, foreground: Tensor, landmarks: Tensor | None = None, *, frame: FaceFrame | None = None) -> RegressedParameters:
        """foreground: B×3×H×W in [0, 1], composited on white, square. The crops are placed by ``frame`` when given
        (training), else by ``landmarks`` (B×68×2, pixels of this image, pixel i spanning [i, i+1)) when given,
        else by its own predicted landmarks."""
        x = self.prepare(foreground) * 2 - 1
        x = self.trunk(self.stem(x))  # B×C×2×2
        global_hidden = self.global_hidden(x.mean(dim=(2, 3)))  # B×hidden
        own_landmarks = self.landmark_head(global_hidden).view(-1, NUM_LANDMARKS, 2) * foreground.shape[-1]  # B×136 -> B×68×2 pixels
        if frame is None:
            frame = FaceFrame.from_landmarks(own_landmarks.detach() if landmarks is None else landmarks.to(foreground))
        left, right, mouth = self.crops(foreground, frame)
        eyes = self.eye_branch(torch.cat([left, right])).chunk(2)  # one pass for both eyes: 2B×f -> B×f, B×f
        hidden = self.hidden(torch.cat([global_hidden, *eyes, self.mouth_branch(mouth)], dim=1))  # B×hidden
        value, activity = self.expression_head(hidden), self.activity_head(hidden)
        # In training, the two parts as they are, for their two losses; else the answer: the median of what they describe
        # (expression_median).
        expression = value if self.training else expression_median(value, activity)
        return RegressedParameters(
            pose=self.pose_head(hidden),
            expression=expression,
            identity=self.identity_head(hidden),
            landmarks=own_landmarks,
            activity=activity,
        )


@dataclass(frozen=True)
class ParameterErrors:
    rotation_deg: float  # mean |yaw, pitch, roll error| in degrees
    expression: float  # mean |ARKit control error| (controls in [0, 1])
    identity: float  # mean |standardised identity feature error| (in standard deviations of the identity prior)
    expression_zero_answer: float | None = None  # answering 0 for every ARKit control, on the same renders: the figure to beat
    expression_given_landmarks: float | None = None  # ARKit error with its crops placed by the renders' true landmarks


def parameter_errors(predicted: RegressedParameters, motion: HeadMotion, identity_targets: Tensor) -> Tensor:
    """Per-image errors, B×3 (rotation degrees, expression, identity), against the true motion and standardised identity."""
    true_pose = torch.stack([motion.yaw, motion.pitch, motion.roll], dim=1).to(predicted.pose)
    rotation = (predicted.pose - true_pose).abs().mean(dim=1) * (180 / math.pi)
    expression = (predicted.expression - motion.expression.to(predicted.expression)).abs().mean(dim=1)
    identity = (predicted.identity - identity_targets.to(predicted.identity)).abs().mean(dim=1)
    return torch.stack([rotation, expression, identity], dim=1)


def zero_answer_error(motion: HeadMotion) -> Tensor:
    """Per-image ARKit error (B) of answering 0 for every control: the mean of the true controls."""
    return motion.expression.abs().mean(dim=1)


def errors_from_means(means: Tensor) -> ParameterErrors:
    """A 3-vector of mean errors (parameter_errors' columns) -> ParameterErrors."""
    return ParameterErrors(rotation_deg=float(means[0]), expression=float(means[1]), identity=float(means[2]))


def identity_prior(seed: int, count: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean and spread of identity_features under the identity prior (a spread of 0, e.g. a constant, becomes 1)."""
    features = identity_features(sample_identities(count, generator=torch.Generator().manual_seed(derived_seed(seed, "prior"))))
    std = features.std(dim=0)
    return features.mean(dim=0), torch.where(std > 1e-6, std, torch.ones_like(std))


HELD_OUT_MOTIONS = ("random", "clips")


def held_out_errors(
    model: ParameterRegressor, *, seed: int, resolution: int, count: int = 256, motions: str = "random", batch: int = 64
) -> ParameterErrors:
    """The regressor's mean errors on fresh renders of random identities from ``seed``, in independent random motions
    (``motions="random"``: sparse random controls, many of which the image cannot tell apart) or in frames of talking-head
    clips of 64 frames (``"clips"``: the benchmark's default motions); its crops placed by its own landmarks, as the
    benchmark uses it. Beside: the all-zero ARKit answer's error on the same renders, and its ARKit error with its crops
    placed by the renders' true landmarks."""
    generator = torch.Generator().manual_seed(seed)
    identity = sample_identities(count, generator=generator)
    if motions == "clips":
        motion = sample_clip_frames(count, generator=generator)
    elif motions == "random":
        motion = sample_motions(count, generator=generator)
    else:
        raise ValueError(f"unknown held-out motions {motions!r} (known: {', '.join(HELD_OUT_MOTIONS)})")
    heads = SyntheticHeads(resolution=resolution)
    errors, given = [], []
    with torch.inference_mode():
        for start in range(0, count, batch):
            part = slice(start, min(start + batch, count))
            render = heads.render(identity[part], motion[part])
            foreground, targets = on_white(render.rgb, render.alpha), model.standardise(identity[part])
            errors.append(parameter_errors(model(foreground), motion[part], targets))
            given.append(parameter_errors(model(foreground, render.landmarks), motion[part], targets)[:, 1])
    means = torch.cat(errors).mean(dim=0)
    return ParameterErrors(
        rotation_deg=float(means[0]),
        expression=float(means[1]),
        identity=float(means[2]),
        expression_zero_answer=float(zero_answer_error(motion).mean()),
        expression_given_landmarks=float(torch.cat(given).mean()),
    )


def load_regressor(path: Path) -> ParameterRegressor:
    """A trained regressor from its checkpoint; anything else (an earlier design's too) raises TrainingError (one line)."""
    checkpoint: dict[str, Any] = load_checkpoint(Path(path))
    if checkpoint_kind(checkpoint) != REGRESSOR_KIND:
        raise TrainingError(
            f"{path} is not a parameter-regressor checkpoint (made by `megalive-train regressor`): {kind_found(checkpoint)}"
        )
    design = checkpoint.get("regressor_design", 1)
    if design != REGRESSOR_DESIGN:
        raise TrainingError(
            f"{path} holds a parameter regressor of design {design} (this code reads design {REGRESSOR_DESIGN}: "
            "eye and mouth crops); train a new one with `megalive-train regressor`"
        )
    config = RegressorConfig(
        **{key: tuple(value) if isinstance(value, list) else value for key, value in checkpoint["model_config"].items()}
    )
    state = checkpoint["model"]
    model = ParameterRegressor(config=config, identity_mean=state["identity_mean"], identity_std=state["identity_std"])
    model.load_state_dict(state)
    return model.eval()
