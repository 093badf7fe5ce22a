"""The student objective's weights (student_objective.py), apart so that the command line reads their defaults
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectiveWeights:
    l1: float = 1.0
    region: float = 4.0  # extra L1 weight inside the eye and mouth boxes (1 + region there)
    ssim: float = 1.0
    mask: float = 1.0
    perceptual: float = 1.0
    face: float = 0.5
    adversarial: float = 0.05
    feature_matching: float = 1.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not 0 <= value <= 1000:  # `not`: NaN is refused too
                raise ValueError(f"the {name} weight must be in [0, 1000], got {value}")
