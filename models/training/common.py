"""What every trainer shares: the user-facing error, the run summary, the optimiser, the batches
(the run folder and its loop are in run_folder.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler


class TrainingError(Exception):
    """A training run that cannot start or resume; one line for the user."""


@dataclass(frozen=True)
class TrainSummary:
    run_dir: Path
    steps: int
    final_losses: dict[str, float]
    samples_per_second: float


def adam_with_cosine(
    parameters: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    *,
    learning_rate: float,
    final_learning_rate: float,
    steps: int,
    betas: tuple[float, float] = (0.9, 0.999),
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """Adam (betas: (0.9, 0.999) unless given) and a cosine schedule from learning_rate to final_learning_rate over steps.
    ``parameters`` may be groups with their own "lr" (each then anneals from its own to final_learning_rate)."""
    optimiser = torch.optim.Adam(parameters, lr=learning_rate, betas=betas)
    return optimiser, torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=final_learning_rate)


def endless_batches(dataset: Dataset, *, batch_size: int, workers: int, seed: int, step: int) -> Iterator[Any]:
    """Batches drawn with replacement, forever; seeded by (seed, step) so a resumed run draws anew."""
    generator = torch.Generator().manual_seed(seed * 7919 + step)
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9, generator=generator)
    return iter(DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0))
