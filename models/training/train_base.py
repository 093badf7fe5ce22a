"""Train the MegaPortraits base model (the teacher, DESIGN.md §4.1): one trainer for CPU and GPU.

Plain (one process) or under ``torchrun --nproc_per_node=N`` (DistributedDataParallel: gloo on CPU,
nccl on CUDA, one process per GPU). Each rank draws its own shard with a DistributedSampler (set_epoch
per epoch); rank 0 alone logs, writes TensorBoard and checkpoints.

One step, per batch element (a ReenactmentSample from SyntheticPairs, or a VideoSample from a prepared
video folder): the source s, its clip's driver d and another video's driver d*; both drivers are augmented
(thin-plate-spline warp, strong colour jitter), then

    x_{s→d}  = G(s, aug(d))   target d                      (self-reenactment)
    x_{s→d*} = G(s, aug(d*))  target: s's identity in d*'s motion (SyntheticHeads has it; real video has not)

Per element, ``cross_valid`` (VideoSample's field; 1 for a ReenactmentSample) weights the cross half's
target terms: L1, mask, perceptual, face and feature matching, and whether the discriminator sees its target as
real (models/data/video_folder.py). The terms that need no target stay for every element: the generator's
hinge on both outputs and the cycle/contrastive loss.

The head pose: with ``pose_network`` (a `megalive-train head-pose` checkpoint) E_mtn reads it from that frozen,
pretrained network, as the paper does (its weights are loaded once, saved inside every checkpoint, and kept out
of the optimiser); without one E_mtn learns it.

Generator loss (λ from DESIGN.md §4.1; the L1, mask and region terms are this project's):

    λ_l1 · L1 on the foreground + λ_mask · L1(alpha, mask) + λ_region · L1 inside the eye and mouth boxes
    + λ_perceptual · perceptual distance (EfficientNet-Lite0, in place of VGG19) on the foreground
    + λ_face · (1 - cosine of dlib ResNet descriptors of chips aligned by the target's landmarks), foreground
    + λ_adv · hinge + λ_fm · feature matching (multi-scale PatchGAN on foreground-masked images)
    + λ_cycle · contrastive loss on E_mtn's z: z(x_{s→d}) pulled to z(d), pushed from the other drivers

(no gaze term: no gaze network can be loaded here; the run's config.json says so)
then one discriminator step (hinge). AdamW (0.5, 0.999), weight decay 1e-2, cosine learning rate
2e-4 -> 1e-6 for both networks. Mixed precision (``amp``) only on CUDA: bfloat16 where supported,
else float16 with a gradient scaler.

A run folder holds config.json (the resolved config: training, model, discriminator, losses with which
perceptual networks ran, data, processes), checkpoint.pt (unwrapped generator and discriminator,
both optimisers and schedulers, gradient scaler, step, and the resolved config; tensors only, written
under a temporary name then renamed, loaded with weights_only=True), log.jsonl, samples.png and
tensorboard/ (scalars and image grids).

Exact resume: weights, optimisers, schedulers and step come from the checkpoint; the data order is a
function of (seed, epoch, rank) and each step's randomness (dropout, augmentation) is seeded from
(seed, rank, step), so a resumed run continues exactly as the uninterrupted one (same number of
processes; a different number is refused). Exactly means bit for bit on the CPU with the same number of
threads (OMP_NUM_THREADS changes the order of float sums); on a GPU, up to CUDA's nondeterministic
kernels (grid_sample's backward adds atomically). ``stop_at`` ends a run early at a step, as an interruption
would, while the schedule still spans ``steps``.

One file on purpose (about 560 lines): the generator and discriminator halves of a step share the augmented
batch, the per-element target weights and the processes; the shared pieces live in run_folder.py, distributed.py,
augment.py and models/losses.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.blocks import on_white
from models.checkpoints import (
    BASE_KIND,
    check_base_checkpoint,
    load_base_weights,
    load_checkpoint,
    load_state,
    save_checkpoint,
    state_digest,
)
from models.data.heads import contact_sheet
from models.data.paired import DatasetError
from models.data.synthetic_pairs import ReenactmentSample, SyntheticPairs, SyntheticPairsConfig
from models.data.video_folder import VideoFolder
from models.face_regions import region_masks
from models.losses import (
    DiscriminatorConfig,
    LossConfig,
    LossWeights,
    MultiScaleDiscriminator,
    cycle_contrastive_loss,
    foreground,
    hinge_generator_loss,
    masked_l1,
    other_drivers,
    per_sample_l1,
    split_discriminator_output,
    weighted_feature_matching_loss,
    weighted_hinge_discriminator_loss,
    weighted_mean,
)
from models.megaportraits.appearance import Appearance
from models.megaportraits.base import BASE_PRESETS, BaseConfig, BaseModel, base_config
from models.megaportraits.motion import Motion
from models.nets.face_descriptor import align_face_chips
from models.training.augment import DriverAugmentation
from models.training.common import TrainingError
from models.training.distributed import (
    DEVICES,
    Processes,
    backend,
    distributed_batches,
    gather_strings,
    mean_over_processes,
    resolve_device,
    seed_step,
    start_processes,
    stop_processes,
)
from models.training.objective_weights import ObjectiveWeights
from models.training.run_folder import RunFolder, summary_writer
from models.training.student_objective import LossNetworks, load_loss_networks
from models.training.train_head_pose import load_head_pose_weights, read_head_pose_checkpoint

# Multi-scale PatchGAN per preset (this project's widths; the paper's published code uses pix2pixHD's).
DISCRIMINATOR_PRESETS: dict[str, DiscriminatorConfig] = {
    "tiny": DiscriminatorConfig(scales=2, channels=(16, 32, 64)),
    "cpu128": DiscriminatorConfig(scales=2, channels=(32, 64, 128, 256)),
    "paper256": DiscriminatorConfig(scales=2, channels=(64, 128, 256, 512)),
    "paper512": DiscriminatorConfig(scales=2, channels=(64, 128, 256, 512)),
}


@dataclass(frozen=True)
class BaseTrainConfig:
    run_dir: str
    preset: str = "cpu128"
    data: str = "synthetic"  # "synthetic" (SyntheticHeads, rendered on the fly) or a folder from `megalive-train prepare`
    steps: int = 20_000  # optimiser steps in total (the cosine schedule spans them)
    batch_size: int = 2  # samples per process and step (each: one self- and one cross-reenactment)
    learning_rate: float = 2e-4
    final_learning_rate: float = 1e-6
    weight_decay: float = 1e-2
    l1_weight: float = 10.0  # foreground L1 of rgb (this project's term)
    mask_weight: float = 10.0  # L1 of the alpha mask (this project's term)
    region_weight: float = 0.0  # L1 inside the target's eye and mouth boxes (this project's term; the student's region L1)
    perceptual_weight: float = 20.0  # perceptual (EfficientNet-Lite0) distance on the foreground: the paper's VGG19 λ
    face_weight: float = 4.0  # face (dlib ResNet) descriptor distance: the paper's face-network λ (gaze, λ 5, is absent)
    adversarial_weight: float = LossWeights.adversarial  # hinge on the PatchGAN (the paper's λ 1)
    feature_matching_weight: float = LossWeights.feature_matching  # the paper's λ 40
    cycle_weight: float = LossWeights.cycle  # contrastive loss on E_mtn's z (the paper's λ 2)
    allow_missing_nets: bool = False  # train without a loss network whose weights are missing (recorded in the run)
    pose_network: str | None = None  # `megalive-train head-pose` checkpoint: the frozen pose network (None: E_mtn learns the pose)
    feature_crops: bool = False  # E_mtn's z also reads eye and mouth crops placed by that network's pose (motion.py)
    decoder_expression: bool = False  # G2D's GroupNorms read the driver's z (decoder.py)
    colour_jitter: float = 0.5  # driver colour jitter strength [0-1]
    warp: float = 0.06  # driver thin-plate-spline displacement [0-0.2]
    identities: int = 1000  # synthetic identity pool
    open_mouth_share: float = 0.0  # synthetic samples drawn as a closed-mouth source with open-mouth drivers (synthetic_pairs.py)
    seed: int = 0
    workers: int = 1  # DataLoader processes per rank
    log_every: int = 25
    checkpoint_every: int = 500
    amp: bool = False  # mixed precision (CUDA only)
    device: str = "auto"  # auto | cpu | cuda
    init: str | None = None  # start from this checkpoint's weights (same preset), with fresh optimisers
    command: str = ""

    @property
    def loss_config(self) -> LossConfig:
        return LossConfig(
            weights=LossWeights(adversarial=self.adversarial_weight, feature_matching=self.feature_matching_weight, cycle=self.cycle_weight)
        )

    @property
    def network_weights(self) -> ObjectiveWeights:
        """The pretrained networks' λ (the other ObjectiveWeights terms are the student's and unused here)."""
        return ObjectiveWeights(perceptual=self.perceptual_weight, face=self.face_weight)

    def model_config(self, pose_network_preset: str | None) -> BaseConfig:
        """The preset, with the frozen head-pose network when one is given."""
        if self.pose_network is None:
            return base_config(self.preset, decoder_expression=self.decoder_expression)
        return base_config(
            self.preset,
            pose_source="pretrained",
            head_pose_preset=str(pose_network_preset),
            feature_crops=self.feature_crops,
            decoder_expression=self.decoder_expression,
        )

    @property
    def augmentation(self) -> DriverAugmentation:
        return DriverAugmentation(colour=self.colour_jitter, warp=self.warp)


# Fields that define what a run computes: a resumed run must have the same ones.
RUN_DEFINING_FIELDS = (
    "preset",
    "data",
    "steps",
    "batch_size",
    "learning_rate",
    "final_learning_rate",
    "weight_decay",
    "l1_weight",
    "mask_weight",
    "region_weight",
    "perceptual_weight",
    "face_weight",
    "adversarial_weight",
    "feature_matching_weight",
    "cycle_weight",
    "pose_network",
    "feature_crops",
    "decoder_expression",
    "colour_jitter",
    "warp",
    "identities",
    "open_mouth_share",
    "seed",
)


def check_base_config(config: BaseTrainConfig) -> None:
    """Cheap checks, before anything is built or written; raises TrainingError (one line)."""
    if config.preset not in BASE_PRESETS:
        raise TrainingError(f"unknown preset {config.preset!r} (known: {', '.join(BASE_PRESETS)})")
    problems = [message for bad, message in (
        (config.steps < 1, "--steps must be at least 1"),
        (config.batch_size < 1, "--batch must be at least 1"),
        (not config.learning_rate > 0, "--lr must be positive"),
        (config.workers < 0, "--workers must be 0 or more"),
        (config.log_every < 1 or config.checkpoint_every < 1, "--log-every and --checkpoint-every must be at least 1"),
        (config.identities < 2, "--identities must be at least 2 (cross drivers come from another identity)"),
        (not 0 <= config.open_mouth_share <= 1, "--open-mouth-share must be in [0, 1]"),
        (config.open_mouth_share > 0 and config.data != "synthetic", "--open-mouth-share draws SyntheticHeads clips: use --data synthetic"),
        (config.device not in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
    ) if bad]  # fmt: skip
    if problems:
        raise TrainingError(problems[0])
    try:
        _ = config.augmentation  # building it checks its options
    except ValueError as error:
        raise TrainingError(f"driver augmentation: {error}") from None
    if config.data != "synthetic":
        training_data(config, resolution=base_config(config.preset).resolution)  # reads meta.json, maps the arrays: cheap
    weights = (config.perceptual_weight, config.face_weight, config.region_weight, config.adversarial_weight,
               config.feature_matching_weight, config.cycle_weight)  # fmt: skip
    if not all(0 <= weight <= 1000 for weight in weights):
        raise TrainingError(
            "--perceptual-weight, --face-weight, --region-weight, --adversarial-weight, --feature-matching-weight and "
            "--cycle-weight must be in [0, 1000]"
        )
    if config.init is not None and not Path(config.init).is_file():
        raise TrainingError(f"--init {config.init}: no such file")
    if config.pose_network is not None:
        read_head_pose_checkpoint(Path(config.pose_network), image_resolution=base_config(config.preset).resolution)
    elif config.feature_crops:
        raise TrainingError("--feature-crops are placed by the frozen head pose: give --pose-network")
    if config.amp and resolve_device(config.device).type != "cuda":
        raise TrainingError("--amp needs a CUDA device; this run is on the CPU")


def training_data(config: BaseTrainConfig, *, resolution: int) -> SyntheticPairs | VideoFolder:
    """The data source named by ``config.data``: "synthetic", or a `megalive-train prepare` folder (resized to
    ``resolution``); a missing or corrupt folder raises TrainingError (one line)."""
    if config.data == "synthetic":
        return SyntheticPairs(
            config=SyntheticPairsConfig(
                resolution=resolution, identities=config.identities, seed=config.seed, open_mouth_share=config.open_mouth_share
            )
        )
    try:
        return VideoFolder(config.data, resolution=resolution, seed=config.seed)
    except DatasetError as error:
        raise TrainingError(" ".join(str(error).split())) from None


def pose_network_preset(config: BaseTrainConfig) -> str | None:
    """The head-pose preset of ``config.pose_network`` (None without one); refuses a wrong checkpoint (TrainingError)."""
    if config.pose_network is None:
        return None
    checkpoint = read_head_pose_checkpoint(Path(config.pose_network), image_resolution=base_config(config.preset).resolution)
    return str(checkpoint["train_config"]["preset"])


def resolved_config(
    config: BaseTrainConfig, *, world_size: int, device: torch.device, data: dict[str, object], networks: dict[str, str]
) -> dict[str, object]:
    """Everything that defines the run, as saved in config.json and in every checkpoint. ``networks``: the loss
    networks' status (load_loss_networks)."""
    amp = {None: "off", torch.bfloat16: "bfloat16", torch.float16: "float16 with gradient scaling"}[amp_dtype(config, device)]
    losses = config.loss_config
    weights = losses.weights
    return {
        "train": asdict(config),
        "model": asdict(config.model_config(pose_network_preset(config))),
        "pose": "frozen head-pose network from " + config.pose_network if config.pose_network else "learned by E_mtn",
        "discriminator": asdict(DISCRIMINATOR_PRESETS[config.preset]),
        "losses": {
            "l1": config.l1_weight,
            "mask": config.mask_weight,
            "region (L1 in the target's eye and mouth boxes)": config.region_weight,
            "perceptual (EfficientNet-Lite0, in place of VGG19)": config.perceptual_weight,
            "face (dlib ResNet, in place of the paper's face network)": config.face_weight,
            "gaze": "absent: no gaze network can be loaded here",
            "adversarial": weights.adversarial,
            "feature_matching": weights.feature_matching,
            "cycle": {"weight": weights.cycle, "scale": losses.cycle_scale, "margin": losses.cycle_margin},
            "networks": networks,
            "on": "the foreground (target masks; the output's own alpha where there is no target)",
        },
        "augmentation": asdict(config.augmentation),
        "data": data,
        "processes": {
            "world_size": world_size,
            "device": str(device),
            "backend": backend(device) if world_size > 1 else "none",
            "samples_per_step": config.batch_size * world_size,
            "amp": amp,
        },
    }


def amp_dtype(config: BaseTrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision's dtype (None: full precision): bfloat16 where the GPU has it, else float16."""
    if not config.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# -- the step ---------------------------------------------------------------------------------------


class ReenactmentOutput(NamedTuple):
    rgb: Tensor  # 2B×3×H×W: x_{s→d} then x_{s→d*}
    alpha: Tensor  # 2B×1×H×W
    driver_expression: Tensor  # 2B×Z: z of aug(d) then of aug(d*)
    output_expression: Tensor  # 2B×Z: z of the two outputs


class ReenactmentPass(nn.Module):
    """The generator's whole forward of one step, as one module (so that DDP sees one forward): the
    source encoded once and driven by both drivers in one batch, and E_mtn of the outputs."""

    def __init__(self, *, model: BaseModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, source: Tensor, driver: Tensor, cross_driver: Tensor) -> ReenactmentOutput:
        """source, driver, cross_driver: B×3×H×W in [0, 1]."""
        batch = source.shape[0]
        appearance = self.model.encode_appearance(source)  # v_s B×C×D×S×S, e_s B×E×k×k
        motions = self.model.encode_motion(torch.cat([source, driver, cross_driver]))  # 3B rows: s, d, d*
        source_motion = Motion(*(part[:batch] for part in motions))
        driver_motion = Motion(*(part[batch:] for part in motions))  # 2B rows: d, d*

        def twice(tensor: Tensor) -> Tensor:  # B×… -> 2B×…
            return torch.cat([tensor, tensor])

        output = self.model.render(
            Appearance(volume=twice(appearance.volume), descriptor=twice(appearance.descriptor)),
            source_motion=Motion(*(twice(part) for part in source_motion)),
            driver_motion=driver_motion,
        )
        output_motion = self.model.encode_motion(output.rgb)
        return ReenactmentOutput(
            rgb=output.rgb, alpha=output.alpha, driver_expression=driver_motion.expression, output_expression=output_motion.expression
        )


LOSS_NAMES = ("generator", "l1", "mask", "region", "perceptual", "face", "adversarial", "feature_matching", "cycle", "discriminator")


def region_l1(rgb: Tensor, targets: Tensor, landmarks: Tensor, valid: Tensor) -> Tensor:
    """Mean |rgb - target| inside the targets' eye and mouth boxes, where the element has a target (``valid``):
    the expression lives in a few percent of the pixels, which the frame-wide terms all but ignore.
    rgb, targets: N×3×H×W; landmarks: N×68×2 pixels of the targets; valid: N."""
    boxes = region_masks(landmarks, size=rgb.shape[-1]).amax(dim=1, keepdim=True)  # N×R×H×W -> N×1×H×W
    return masked_l1(rgb, targets, boxes.to(rgb) * valid.view(-1, 1, 1, 1))


def network_terms(
    networks: LossNetworks, rgb: Tensor, targets: Tensor, masks: Tensor, landmarks: Tensor, valid: Tensor
) -> tuple[Tensor, Tensor]:
    """Perceptual (EfficientNet-Lite0) and face (dlib ResNet) distances on the foreground, each a mean over the
    elements with a target (``valid``); 0 for an absent network. rgb, targets: N×3×H×W; masks: N×1×H×W (the
    targets'); landmarks: N×68×2 pixels of the targets (any valid face where ``valid`` is 0: it is weighted out)."""
    zero = rgb.new_zeros(())
    fake, real = foreground(rgb, masks), foreground(targets, masks)
    perceptual = zero if networks.perceptual is None else weighted_mean(networks.perceptual.perceptual_distance(fake, real), valid)
    if networks.face is None:
        return perceptual, zero
    with torch.autocast(device_type=rgb.device.type, enabled=False):  # the alignment solves a least-squares fit
        chips = align_face_chips(torch.cat([fake, real]).float(), torch.cat([landmarks, landmarks]).float() - 0.5)  # 2N×3×150×150
        fake_descriptor, real_descriptor = networks.face(chips).chunk(2)  # N×128 each
    face = weighted_mean(1 - F.cosine_similarity(fake_descriptor, real_descriptor.detach(), dim=1), valid)
    return perceptual, face


def _on_device(batch: Any, device: torch.device) -> tuple[ReenactmentSample, Tensor]:
    """A collated ReenactmentSample or VideoSample -> (the six shared fields on ``device``, cross_valid B float)."""
    sample = ReenactmentSample(*(tensor.to(device, non_blocking=True) for tensor in batch[: len(ReenactmentSample._fields)]))
    valid = getattr(batch, "cross_valid", None)
    if valid is None:  # SyntheticPairs: every cross target is real
        return sample, sample.source.new_ones(sample.source.shape[0])
    return sample, valid.to(device, non_blocking=True).float().reshape(-1)


def _adamw_with_cosine(module: nn.Module, config: BaseTrainConfig) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.CosineAnnealingLR]:
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]  # not the frozen head-pose network
    optimiser = torch.optim.AdamW(trainable, lr=config.learning_rate, betas=(0.5, 0.999), weight_decay=config.weight_decay)
    return optimiser, torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps, eta_min=config.final_learning_rate)


def _sample_sheet(batch: ReenactmentSample, drivers: Tensor, output: ReenactmentOutput, rows: int = 4) -> Tensor:
    """Per sample one row: source, aug(d), output, target | aug(d*), output, target (outputs and targets on white)."""
    count = min(rows, batch.source.shape[0])
    half = batch.source.shape[0]
    rgb, alpha = output.rgb.detach().float(), output.alpha.detach().float()
    columns = [
        batch.source,
        drivers[:half],
        on_white(rgb[:half], alpha[:half]),
        on_white(batch.driver, batch.driver_alpha),
        drivers[half:],
        on_white(rgb[half:], alpha[half:]),
        on_white(batch.cross_target, batch.cross_target_alpha),
    ]
    tiles = torch.stack([column[:count].detach().float().cpu() for column in columns], dim=1).flatten(0, 1)  # count×7 tiles
    return contact_sheet(tiles, columns=len(columns))


@dataclass(frozen=True)
class BaseTrainSummary:
    run_dir: Path
    steps: int
    final_losses: dict[str, float]
    samples_per_second: float  # all processes together
    world_size: int
    rank: int  # of the process that returns this (0 in a plain run)
    weights_digest: str  # state_digest of the generator and discriminator
    replicas_agree: bool  # every process ended with the same weights


def train_base(config: BaseTrainConfig, *, progress: bool = True, stop_at: int | None = None) -> BaseTrainSummary:
    """Train (or resume) the run in ``config.run_dir``; under torchrun every process calls this."""
    check_base_config(config)
    processes = start_processes(config.device)
    try:
        return _train(config, processes, progress=progress, stop_at=stop_at)
    finally:
        stop_processes(processes)


def _train(config: BaseTrainConfig, processes: Processes, *, progress: bool, stop_at: int | None) -> BaseTrainSummary:
    device, run = processes.device, RunFolder(config.run_dir)
    checkpoint_path = run.checkpoint_path
    model_config, discriminator_config = config.model_config(pose_network_preset(config)), DISCRIMINATOR_PRESETS[config.preset]

    # Everything that can refuse the run comes before anything is written.
    networks = load_loss_networks(config.network_weights, allow_missing=config.allow_missing_nets)
    for network in (networks.perceptual, networks.face):
        if network is not None:
            network.to(device).eval().requires_grad_(False)
    checkpoint = run.saved_checkpoint()
    if checkpoint is not None:
        check_base_checkpoint(checkpoint, path=checkpoint_path, preset=config.preset, role="resume: the run's checkpoint")
        saved = checkpoint.get("train_config", {})
        # A field a run saved before it existed had its default then (e.g. region_weight: 0).
        changed = [name for name in RUN_DEFINING_FIELDS if saved.get(name, getattr(BaseTrainConfig, name)) != getattr(config, name)]
        if changed:
            raise TrainingError(
                f"{checkpoint_path} belongs to a run with another {changed[0]} ({saved.get(changed[0])!r}, "
                f"not {getattr(config, changed[0])!r}); use a new --run folder (and --init {checkpoint_path})"
            )
        if checkpoint.get("world_size") != processes.world_size:
            raise TrainingError(
                f"{checkpoint_path} was trained on {checkpoint.get('world_size')} processes, not {processes.world_size}: "
                "resume with the same number (or a new --run folder with --init)"
            )
    initial: dict[str, Any] | None = None
    if checkpoint is None and config.init is not None:
        initial = load_checkpoint(Path(config.init))
        check_base_checkpoint(initial, path=Path(config.init), preset=config.preset, role="--init")
    dataset = training_data(config, resolution=model_config.resolution)

    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = BaseModel(config=model_config).to(device)
    discriminator = MultiScaleDiscriminator(config=discriminator_config).to(device)
    source = checkpoint if checkpoint is not None else initial
    if source is not None:
        where = checkpoint_path if checkpoint is not None else Path(str(config.init))
        load_base_weights(model, source, path=where)
        load_state(discriminator, source, "discriminator", path=where)
    if config.pose_network is not None:
        pose_path = Path(config.pose_network)
        head_pose = model.motion_encoder.head_pose
        assert head_pose is not None
        pose_checkpoint = read_head_pose_checkpoint(pose_path, image_resolution=model_config.resolution)
        if source is None:
            load_head_pose_weights(head_pose, pose_checkpoint, path=pose_path)
        elif state_digest(head_pose.state_dict()) != state_digest(pose_checkpoint["model"]):
            raise TrainingError(f"{where} was trained with another head-pose network than --pose-network {pose_path}")
    optimiser_g, scheduler_g = _adamw_with_cosine(model, config)
    optimiser_d, scheduler_d = _adamw_with_cosine(discriminator, config)
    resolved = resolved_config(config, world_size=processes.world_size, device=device, data=dataset.describe(), networks=networks.status)
    precision = amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision is torch.float16)
    step = 0
    if checkpoint is not None:
        optimiser_g.load_state_dict(checkpoint["optimiser_generator"])
        optimiser_d.load_state_dict(checkpoint["optimiser_discriminator"])
        scheduler_g.load_state_dict(checkpoint["scheduler_generator"])
        scheduler_d.load_state_dict(checkpoint["scheduler_discriminator"])
        if scaler.is_enabled() and checkpoint.get("grad_scaler"):
            scaler.load_state_dict(checkpoint["grad_scaler"])
        step = int(checkpoint["step"])

    reenact: nn.Module = ReenactmentPass(model=model)
    judge: nn.Module = discriminator
    if processes.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        # No buffers to sync per forward: GroupNorm, no BatchNorm; spectral norm's vectors follow the (equal) weights.
        reenact = DistributedDataParallel(reenact, device_ids=device_ids, forward_sync_buffers=False)
        judge = DistributedDataParallel(discriminator, device_ids=device_ids, forward_sync_buffers=False)

    if processes.main:
        run.write_config(resolved)
    writer = summary_writer(run.path, purge_step=step if step > 0 else None) if processes.main else None
    weights, loss_config, augment = config.loss_config.weights, config.loss_config, config.augmentation
    autocast = torch.autocast(device_type=device.type, dtype=precision, enabled=precision is not None)
    model.train()
    discriminator.train()
    batches = distributed_batches(
        dataset, batch_size=config.batch_size, processes=processes, seed=config.seed, workers=config.workers, start_step=step
    )
    stepping = run.progress(
        total=config.steps,
        step=step,
        description=f"base {config.preset}",
        show=progress and processes.main,
        write_log=processes.main,
        stop_at=stop_at,
    )
    with contextlib.closing(batches), stepping as steps, contextlib.ExitStack() as cleanup:
        if writer is not None:
            cleanup.callback(writer.close)
        steps.event(
            {
                "event": "start",
                "step": step,
                "world_size": processes.world_size,
                "device": str(device),
                "resumed": checkpoint is not None,
                "init": config.init if initial is not None else None,
            }
        )
        while steps.running:
            step = steps.step
            batch, cross_valid = _on_device(next(batches), device)
            generator = seed_step(config.seed, processes.rank, step)
            half = batch.source.shape[0]
            drivers = augment(torch.cat([batch.driver, batch.cross_driver]), generator=generator)  # 2B: aug(d), aug(d*)
            targets = torch.cat([batch.driver, batch.cross_target])
            masks = torch.cat([batch.driver_alpha, batch.cross_target_alpha])
            valid = torch.cat([torch.ones_like(cross_valid), cross_valid])  # 2B: self always, cross where it has a target
            weighted_masks = masks * valid.view(-1, 1, 1, 1)  # a target-less element drops out of L1 and perceptual
            real = foreground(targets, masks)  # zeros where there is no target: never shown as real (weighted out below)

            # Generator step (the discriminator frozen and called unwrapped: no DDP bookkeeping for it here).
            discriminator.requires_grad_(False)
            with autocast:
                output = reenact(batch.source, drivers[:half], drivers[half:])
                rgb = output.rgb.float()
                # Fakes are masked by the target's mask, or by their own (detached) alpha where there is no target.
                fake_masks = weighted_masks + (1 - valid).view(-1, 1, 1, 1) * output.alpha.detach().float()
                l1 = masked_l1(rgb, targets, weighted_masks)
                mask_loss = weighted_mean(per_sample_l1(output.alpha.float(), masks), valid)
                # Target-less elements are zero on both sides (feature L1 exactly 0): rescale the batch mean to theirs.
                # Elements without a target borrow their self pair's landmarks (weighted out, but the face alignment needs a face).
                self_landmarks = torch.cat([batch.driver_landmarks, batch.driver_landmarks])
                target_landmarks = torch.where(
                    valid.view(-1, 1, 1) > 0, torch.cat([batch.driver_landmarks, batch.cross_target_landmarks]), self_landmarks
                )
                region_loss = region_l1(rgb, targets, target_landmarks, valid) if config.region_weight > 0 else l1.new_zeros(())
                perceptual_loss, face_loss = network_terms(networks, rgb, targets, weighted_masks, target_landmarks, valid)
                judged = discriminator(torch.cat([real, foreground(rgb, fake_masks)]))
                _, fake_logits, real_features, fake_features = split_discriminator_output(judged, 2 * half)
                adversarial = hinge_generator_loss([logits.float() for logits in fake_logits])
                matching = weighted_feature_matching_loss(
                    [[f.float() for f in s] for s in real_features], [[f.float() for f in s] for s in fake_features], valid
                )
                driver_z = output.driver_expression.float()
                cycle = cycle_contrastive_loss(
                    output.output_expression.float(),
                    driver_z,
                    other_drivers(driver_z),
                    scale=loss_config.cycle_scale,
                    margin=loss_config.cycle_margin,
                )
                total = (
                    config.l1_weight * l1
                    + config.mask_weight * mask_loss
                    + config.region_weight * region_loss
                    + config.perceptual_weight * perceptual_loss
                    + config.face_weight * face_loss
                    + weights.adversarial * adversarial
                    + weights.feature_matching * matching
                    + weights.cycle * cycle
                )
            optimiser_g.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimiser_g)
            discriminator.requires_grad_(True)

            # Discriminator step.
            with autocast:
                judged = judge(torch.cat([real, foreground(rgb.detach(), fake_masks)]))
                real_logits, fake_logits, _, _ = split_discriminator_output(judged, 2 * half)
                discriminator_loss = weighted_hinge_discriminator_loss(
                    [x.float() for x in real_logits], [x.float() for x in fake_logits], valid
                )
            optimiser_d.zero_grad(set_to_none=True)
            scaler.scale(discriminator_loss).backward()
            scaler.step(optimiser_d)
            scaler.update()
            scheduler_g.step()
            scheduler_d.step()
            steps.advance()
            step = steps.step

            if steps.due(config.log_every):
                values = [total, l1, mask_loss, region_loss, perceptual_loss, face_loss, adversarial, matching, cycle, discriminator_loss]
                losses = mean_over_processes(
                    {name: float(value.detach()) for name, value in zip(LOSS_NAMES, values, strict=True)}, processes
                )
                rate = steps.samples_per_second(batch_size=config.batch_size * processes.world_size)
                learning_rate = scheduler_g.get_last_lr()[0]
                steps.log(losses, learning_rate=learning_rate, extra={"samples_per_second": rate})
                if writer is not None:
                    for name, value in losses.items():
                        writer.add_scalar(f"loss/{name}", value, step)
                    writer.add_scalar("train/learning_rate", learning_rate, step)
                    writer.add_scalar("train/samples_per_second", rate, step)
            if processes.main and steps.due(config.checkpoint_every):
                save_checkpoint({
                    "generator": model.state_dict(), "discriminator": discriminator.state_dict(),
                    "optimiser_generator": optimiser_g.state_dict(), "optimiser_discriminator": optimiser_d.state_dict(),
                    "scheduler_generator": scheduler_g.state_dict(), "scheduler_discriminator": scheduler_d.state_dict(),
                    "grad_scaler": scaler.state_dict(), "step": step, "world_size": processes.world_size,
                    "model_config": asdict(model_config), "discriminator_config": asdict(discriminator_config),
                    "train_config": asdict(config), "resolved_config": resolved,
                    "rng": "derived per step: torch, numpy and python seeded from (seed, rank, step)",
                }, checkpoint_path, kind=BASE_KIND)  # fmt: skip
                sheet = _sample_sheet(batch, drivers, output)
                run.save_samples(sheet)
                if writer is not None:
                    writer.add_image("samples", sheet, step)
                    writer.flush()

        digest = state_digest(model.state_dict(), discriminator.state_dict())
        digests = gather_strings(digest, processes)
        agree = len(set(digests)) == 1
        steps.event({"event": "end", "step": step, "weights_digest": digest, "process_digests": digests, "replicas_agree": agree})
        if processes.main and not agree:
            tqdm.write(f"warning: the processes ended with different weights ({', '.join(digests)}); the checkpoint holds rank 0's")
    return BaseTrainSummary(
        run_dir=run.path,
        steps=steps.step,
        final_losses=steps.last_losses,
        samples_per_second=steps.samples_per_second(batch_size=config.batch_size * processes.world_size),
        world_size=processes.world_size,
        rank=processes.rank,
        weights_digest=digest,
        replicas_agree=agree,
    )
