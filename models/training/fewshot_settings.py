"""The few-shot talking heads' training settings (meta-learning and fine-tuning), apart so that the command line reads
their defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.training.objective_weights import ObjectiveWeights


@dataclass(frozen=True)
class FewShotLossWeights:
    """The terms beside the content ones (fewshot_objective.py). The paper's λ: feature matching 10, embedding match 80
    (one term, so it moves both W_i and ê; here each side has its own λ)."""

    adversarial: float = 1.0  # hinge on the projection discriminator's realism
    feature_matching: float = 10.0  # L1 between the discriminator's features of output and target, per block
    embedding_match: float = 80.0  # mean |W_i - ê_i| in the discriminator's step: its row of the video pulled toward ê
    embedder_match: float = 80.0  # the same term in the generator's step: ê pulled toward W_i (the paper has both)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not 0 <= value <= 1000:
                raise ValueError(f"the {name} weight must be in [0, 1000], got {value}")


def _content() -> ObjectiveWeights:
    # The content terms of the student's objective (L1 weighted on eyes and mouth, SSIM, mask, perceptual EfficientNet-
    # Lite0, face dlib ResNet); its own PatchGAN is off: the projection discriminator judges here.
    return ObjectiveWeights(adversarial=0.0, feature_matching=0.0)


def _content_only() -> FewShotLossWeights:
    # Fine-tuning without the discriminator: with the paper's hinge and feature matching (λ 1, 10) a CPU-trained
    # discriminator drove K = 8 fine-tuning below the feed-forward model (README, "Few-shot talking heads").
    return FewShotLossWeights(adversarial=0.0, feature_matching=0.0)


@dataclass(frozen=True)
class FewShotMetaConfig:
    run_dir: str
    preset: str = "cpu128"
    data: str = ""  # a `megalive-train prepare` folder; "" = SyntheticHeads videos rendered at the start
    identities: int = 600  # synthetic videos (one identity each): the discriminator's rows
    frames_per_video: int = 16
    shots: int = 8  # K: frames embedded per episode (the paper meta-learns with 8)
    steps: int = 3000
    batch: int = 4  # episodes per step
    learning_rate: float = 2e-4  # generator and embedder (Adam β 0.5, 0.999; cosine to final_learning_rate)
    discriminator_learning_rate: float = 4e-4  # two time-scales, as the paper
    final_learning_rate: float = 1e-5
    content: ObjectiveWeights = field(default_factory=_content)
    losses: FewShotLossWeights = field(default_factory=FewShotLossWeights)
    perceptual_size: int = 0  # frames resized to this before the perceptual network (0: as they are)
    allow_missing_nets: bool = False
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 100
    device: str = "cpu"
    command: str = ""


@dataclass(frozen=True)
class FewShotFinetuneConfig:
    checkpoint: str  # the meta-learned `megalive-train fewshot-meta` RUN/checkpoint.pt
    frames: str  # a folder of images, a video or one image of the new person
    out: str  # the personal model, <stem>.onnx (its card <stem>.json beside it)
    name: str = ""  # the avatar's name ("" = the output's stem)
    shots: int = 8  # K frames used
    steps: int = 100
    batch: int = 4  # frames per step (drawn from the K)
    learning_rate: float = 2e-4  # generator, ψ' and discriminator: meta-learning's generator rate, as the paper fine-tunes at its own
    content: ObjectiveWeights = field(default_factory=_content)
    losses: FewShotLossWeights = field(default_factory=_content_only)  # README "Few-shot": the adversarial terms hurt here
    perceptual_size: int = 0
    allow_missing_nets: bool = False
    threads: int = 0  # torch threads (0: torch's default)
    seed: int = 0
    command: str = ""
