"""The enhancer's training and benchmark settings (DESIGN §4.2), apart so that the command line reads their defaults
without importing torch. The trainer is train_enhancer.py, the benchmark models/enhancer_evaluation.py."""

from __future__ import annotations

from dataclasses import dataclass

HELD_OUT_SEED = 424242  # models.evaluation.HELD_OUT_SEED: no training stream uses it (the enhancer's SyntheticPairs hash theirs)


@dataclass(frozen=True)
class EnhancerTrainConfig:
    run_dir: str
    teacher: str  # a `megalive-train base` checkpoint (frozen)
    preset: str | None = None  # refuse a teacher of another preset (None: whatever the teacher's is)
    steps: int = 10_000  # optimiser steps in total (the cosine schedule spans them)
    batch_size: int = 2  # samples per step (each: one self- and one cross-driven reenactment)
    learning_rate: float = 2e-4
    final_learning_rate: float = 1e-6
    weight_decay: float = 1e-2
    l1_weight: float = 100.0  # self-driven: L1 of rgb on the foreground + L1 of alpha (paper: L1 λ 100)
    adversarial_weight: float = 1.0  # hinge, self- and cross-driven
    feature_matching_weight: float = 100.0  # self-driven (paper λ 100)
    cycle_weight: float = 10.0  # cross-driven: the downsampled output against the teacher's (paper λ 10)
    identities: int = 1000  # synthetic identity pool
    seed: int = 0
    workers: int = 1  # DataLoader processes rendering the pairs
    log_every: int = 25
    checkpoint_every: int = 500
    device: str = "auto"  # auto | cpu | cuda
    command: str = ""


# Fields that define what a run computes: a resumed run must have the same ones (and the same teacher).
RUN_DEFINING_FIELDS = (
    "steps",
    "batch_size",
    "learning_rate",
    "final_learning_rate",
    "weight_decay",
    "l1_weight",
    "adversarial_weight",
    "feature_matching_weight",
    "cycle_weight",
    "identities",
    "seed",
)


@dataclass(frozen=True)
class EnhancerEvalConfig:
    enhancer: str  # a `megalive-train enhancer` RUN/checkpoint.pt
    out: str  # the folder for the report, table and contact sheet
    teacher: str | None = None  # the teacher checkpoint (default: the one the enhancer was trained behind)
    preset: str | None = None  # refuse an enhancer for another teacher preset
    sources: int = 4  # held-out source identities
    clips: int = 4  # held-out clips (one new driver identity each)
    frames_per_clip: int = 8
    seed: int = HELD_OUT_SEED
    batch_size: int = 8
    metric_size: int = 224  # side images are resized to for EfficientNet-Lite0; 0: as they are
