"""Processes for data-parallel training: one plain process, or torchrun's N (DistributedDataParallel,
gloo on CPU, nccl on CUDA, one process per GPU); each rank's shard of the data and its per-step seeds.

Under ``torchrun --nproc_per_node=N`` every process runs the same trainer; rank 0 alone logs and writes.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from models.data.synthetic_pairs import derived_seed
from models.training.common import TrainingError

DEVICES = ("auto", "cpu", "cuda")  # --device: auto is CUDA when there is one


def resolve_device(requested: str, *, local_rank: int = 0) -> torch.device:
    """The device for "auto", "cpu" or "cuda" (--device); cuda without a GPU raises TrainingError."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def world_size_from_environment() -> int:
    """torchrun's WORLD_SIZE (1 in a plain run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(requested_device: str) -> Processes:
    """This process's rank and device: one process, or torchrun's (init_process_group from its environment)."""
    world_size = world_size_from_environment()
    if world_size == 1:
        return Processes(rank=0, world_size=1, device=resolve_device(requested_device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank=local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend(device), init_method="env://")
    return Processes(rank=dist.get_rank(), world_size=world_size, device=device)


def mean_over_processes(values: dict[str, float], processes: Processes) -> dict[str, float]:
    if processes.world_size == 1:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=processes.device)
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / processes.world_size).tolist(), strict=True))


def gather_strings(value: str, processes: Processes) -> list[str]:
    if processes.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * processes.world_size
    dist.all_gather_object(gathered, value)
    return [str(item) for item in gathered]


def stop_processes(processes: Processes) -> None:
    if processes.world_size > 1:
        dist.destroy_process_group()


def distributed_batches(
    dataset: Dataset, *, batch_size: int, processes: Processes, seed: int, workers: int, start_step: int
) -> Iterator[Any]:
    """This rank's batches from ``start_step`` on, forever: epoch e is DistributedSampler's shard for
    set_epoch(e), so a resumed run skips exactly the batches already seen (without rendering them)."""
    sampler = DistributedSampler(dataset, num_replicas=processes.world_size, rank=processes.rank, shuffle=True, seed=seed, drop_last=True)
    per_epoch = len(sampler) // batch_size
    if per_epoch < 1:
        raise TrainingError(f"an epoch of {len(dataset)} samples holds no batch of {batch_size} per process")
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        indices = list(sampler)[skip * batch_size : per_epoch * batch_size]
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=indices, num_workers=workers, drop_last=True, pin_memory=processes.device.type == "cuda"
        )
        yield from loader
        epoch, skip = epoch + 1, 0


def seed_step(seed: int, rank: int, step: int) -> torch.Generator:
    """Seed torch (CPU and CUDA), numpy and python for this rank's step; return the augmentation generator."""
    value = derived_seed(seed, "step", rank, step)
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)
    return torch.Generator().manual_seed(derived_seed(seed, "augment", rank, step))


def end_process(status: int, *, distributed: bool) -> int:
    """A torchrun worker ends here, without interpreter finalisation. DDP keeps gloo's worker threads alive past
    destroy_process_group (torch 2.13), and one that drops the last tensor of a finished collective while Python
    finalises aborts the whole run (SIGABRT, "terminate called without an active exception"; twice in about 350
    runs here, once in CI). Everything the run writes is closed and renamed into place by then."""
    if not distributed:
        return status
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
