"""The run folder every trainer shares (config.json, log.jsonl with its
progress bar, checkpoint.pt, samples.png), the optimiser's resumable state and the summary.

A trainer's loop, in outline (train_student.py; train_base.py adds processes):

    run = RunFolder(config.run_dir)
    checkpoint = run.saved_checkpoint()              # None in a new run
    step = restore_optimiser_state(checkpoint, optimiser, scheduler) if checkpoint else 0
    run.write_config({...})
    with run.progress(total=config.steps, step=step, description="student") as progress:
        while progress.running:
            ...one optimiser step...
            progress.advance()
            if progress.due(config.log_every):
                progress.log(losses, learning_rate=scheduler.get_last_lr()[0])
            if progress.due(config.checkpoint_every):
                save_checkpoint({..., **optimiser_state(optimiser, scheduler, progress.step)}, run.checkpoint_path, kind=...)
    summary = progress.summary(batch_size=config.batch_size)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from models.checkpoints import load_checkpoint
from models.data.paired import save_png
from models.training.common import TrainSummary


def samples_per_second(*, steps: int, batch_size: int, seconds: float) -> float:
    """Training throughput; NaN when nothing was timed."""
    return steps * batch_size / seconds if seconds > 0 and steps > 0 else math.nan


def optimiser_state(optimiser: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> dict[str, Any]:
    """What a checkpoint needs to resume the optimiser exactly: its state, the schedule's, the step and torch's RNG."""
    return {"optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(), "step": step, "rng_torch": torch.get_rng_state()}


def restore_optimiser_state(
    checkpoint: dict[str, Any], optimiser: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> int:
    """optimiser_state's inverse; returns the step to continue from."""
    optimiser.load_state_dict(checkpoint["optimiser"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng_torch"])
    return int(checkpoint["step"])


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a run resumes from) and any torn line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def summary_writer(run_dir: Path, *, purge_step: int | None) -> Any:
    """TensorBoard's writer for RUN/tensorboard (None, said once, when TensorBoard is not installed); ``purge_step``
    drops the events a resumed run will write again."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        tqdm.write("TensorBoard is not installed (pip install tensorboard): scalars go to log.jsonl only")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


class RunProgress:
    """The step loop's progress bar and log.jsonl, counting steps from where the run resumed."""

    def __init__(self, *, bar: tqdm, log: TextIO | None, step: int, last_step: int) -> None:
        self.bar, self.log_file, self.step, self.last_step = bar, log, step, last_step
        self.first_step, self.began = step, time.perf_counter()
        self.last_losses: dict[str, float] = {}

    def advance(self) -> None:
        self.step += 1
        self.bar.update(1)

    def due(self, every: int) -> bool:
        """Whether this step is one of every ``every`` steps, or the run's last."""
        return self.step % every == 0 or self.step == self.last_step

    @property
    def running(self) -> bool:
        return self.step < self.last_step

    def event(self, entry: dict[str, object]) -> None:
        """A log.jsonl line that is not a step's losses (a start, an end)."""
        if self.log_file is not None:
            self.log_file.write(json.dumps(entry) + "\n")
            self.log_file.flush()

    def log(self, losses: dict[str, float], *, learning_rate: float, extra: dict[str, float] | None = None) -> None:
        """One log.jsonl line; the bar shows the first two losses."""
        self.last_losses = losses
        self.bar.set_postfix({name: f"{value:.4f}" for name, value in list(losses.items())[:2]})
        self.event({"step": self.step, "lr": learning_rate, **losses, **(extra or {})})

    def samples_per_second(self, *, batch_size: int) -> float:
        return samples_per_second(steps=self.step - self.first_step, batch_size=batch_size, seconds=time.perf_counter() - self.began)

    def summary(self, *, run_dir: Path, batch_size: int) -> TrainSummary:
        rate = self.samples_per_second(batch_size=batch_size)
        return TrainSummary(run_dir=run_dir, steps=self.step, final_losses=self.last_losses, samples_per_second=rate)


class RunFolder:
    """A run's folder: config.json (the resolved config), log.jsonl (one line per logged step; on resume,
    lines past the checkpoint's step are dropped), checkpoint.pt and samples.png. Files are written under a
    temporary name then renamed, so a crash never leaves half a file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.log_path = self.path / "log.jsonl"

    def saved_checkpoint(self) -> dict[str, Any] | None:
        """The run's checkpoint, or None in a new run."""
        return load_checkpoint(self.checkpoint_path) if self.checkpoint_path.exists() else None

    def write_config(self, resolved: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        temporary = self.path / ".config.json.tmp"
        temporary.write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")
        temporary.replace(self.path / "config.json")

    def save_samples(self, sheet: torch.Tensor) -> None:
        """3×H×W in [0, 1] -> samples.png."""
        save_png(sheet, self.path / "samples.png")

    @contextmanager
    def progress(
        self, *, total: int, step: int, description: str, show: bool, write_log: bool = True, stop_at: int | None = None
    ) -> Iterator[RunProgress]:
        """The progress bar and the log, opened at ``step``: a new run (step 0) starts an empty log, a resumed one
        trims it to ``step``. ``write_log`` False in processes other than the first; ``stop_at`` ends the loop
        early (as an interruption would) while the bar and schedule span ``total``."""
        last_step = total if stop_at is None else max(0, min(stop_at, total))
        if write_log:
            self.path.mkdir(parents=True, exist_ok=True)
            if step == 0:
                self.log_path.write_text("", encoding="utf-8")
            else:
                trim_log(self.log_path, step)
        with tqdm(total=total, initial=step, desc=description, unit="step", disable=not show) as bar:
            if not write_log:
                yield RunProgress(bar=bar, log=None, step=step, last_step=last_step)
                return
            with open(self.log_path, "a", encoding="utf-8") as log:
                yield RunProgress(bar=bar, log=log, step=step, last_step=last_step)
