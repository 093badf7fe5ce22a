"""The embedder trainer's settings (train_embedder.py), apart so that the command line reads their defaults without
importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.training.objective_weights import ObjectiveWeights


def _no_discriminator() -> ObjectiveWeights:
    return ObjectiveWeights(adversarial=0.0, feature_matching=0.0)


@dataclass(frozen=True)
class EmbedderTrainConfig:
    student: str  # the `megalive-train student` checkpoint it starts from
    data: str  # that student's paired dataset (its avatars' pairs)
    run_dir: str
    preset: str = "cpu256"  # the student's; the embedder's size follows it
    steps: int = 2000
    native_batch: int = 4  # pairs of the student's own avatars per step
    new_batch: int = 4  # new identities per step
    shots: int = 4  # frames rendered per new identity; each step uses the first 1..shots of them
    learning_rate: float = 3e-4  # the student's (trained already)
    embedder_learning_rate: float = 1e-3  # the embedder's (new)
    final_learning_rate: float = 1e-5
    objective: ObjectiveWeights = field(default_factory=_no_discriminator)
    perceptual_size: int = 128
    allow_missing_nets: bool = False
    colour_jitter: float = 0.3
    warp: float = 0.04
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 100
    workers: int = 1
    command: str = ""
