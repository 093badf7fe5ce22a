"""Few-shot refinement jobs (DESIGN §3 `enroll`, §4.3): after a one-shot enrollment, the avatar's identity tensor is
fitted to its frames by `megalive-train enroll` in a separate process, so the torch-free server keeps serving.

    enroll -> the one-shot avatar at once -> RefinementJobs.start: JOB.in.npz (crops, landmarks, identity), then
    `python -m models.cli enroll --progress-lines` (it needs the `train` extra: torch) at a lower priority
    -> a reader thread keeps the job's step and loss from its JSON lines (what `stats` shows)
    -> RefinementJobs.finished (polled by the service loop): a complete JOB.out.npz -> the engine swaps the tensor in
       (the bank written to a temporary file, then renamed). A job that fails, is cancelled or dies leaves the bank
       and the one-shot avatar as they were.

One job runs at a time (two cores: a second would only slow both); later ones wait in order. Job folders live in a
temporary directory of the server's, removed on close.

What a job fits (``RefinementTarget``): the avatar's own frames, self-driven (the default), or a frozen MegaPortraits
teacher's reenactments of them, optionally enhanced (`megalive serve --refine-teacher BASE.pt [--refine-enhancer ENH.pt]`).
A teacher target is checked once at start (``check_refinement_target``: the job command's dry run loads the model, the
teacher and the enhancer), so a wrong checkpoint stops the server in one line instead of failing every job.
"""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.model_card import ModelCard
from contract.refinement_job import RefinementInput, RefinementJobError, RefinementOutput, parse_line, read_output, write_input

JOB_NICENESS = 10  # below the live server's priority: frames keep coming while a job runs
TARGET_CHECK_TIMEOUT_S = 300  # the start-up dry run: import torch, load the model's weights, the teacher and the enhancer
FINISHED_JOBS_KEPT = 16  # ended jobs `stats` still reports
STDERR_LINES_KEPT = 20


def refinement_unavailable(card: ModelCard) -> str | None:
    """Why this server cannot refine avatars, or None when it can."""
    if card.enrollment is None:
        return f"{card.name} is a contract v1 model: it cannot enroll"
    if card.teacher is not None:
        return f"{card.name} is a MegaPortraits teacher: its avatars are one-shot (the portrait's encoding), with nothing to refine"
    if card.enrollment.weights_path is None:
        return f"{card.name} has no student weights beside it ({card.model_path.stem}.weights.npz): re-export it to refine"
    if importlib.util.find_spec("torch") is None:
        return "refinement needs PyTorch (pip install 'megalive[train]'); the one-shot avatar is enrolled without it"
    return None


@dataclass(frozen=True, kw_only=True)
class RefinementTarget:
    """What a refinement job fits the identity tensor to: the enrollment frames (teacher None) or a frozen teacher's
    reenactments of them (`megalive-train enroll --target teacher`), enhanced when an enhancer is given."""

    teacher: Path | None = None  # a `megalive-train base` checkpoint
    enhancer: Path | None = None  # a `megalive-train enhancer` checkpoint behind that teacher's preset

    def __post_init__(self) -> None:
        if self.enhancer is not None and self.teacher is None:
            raise ValueError("--refine-enhancer enhances a teacher's reenactments: give --refine-teacher as well")

    @property
    def kind(self) -> str:
        return "frames" if self.teacher is None else "teacher"

    def options(self) -> tuple[str, ...]:
        """The job command's options for this target."""
        if self.teacher is None:
            return ()
        enhancer = () if self.enhancer is None else ("--enhancer", str(self.enhancer))
        return ("--target", "teacher", "--teacher", str(self.teacher), *enhancer)

    def describe(self) -> dict[str, object]:
        """What `hello` and `stats` say of it: the kind and the checkpoints' file names (not the server's folders)."""
        if self.teacher is None:
            return {"kind": "frames"}
        return {"kind": "teacher", "teacher": self.teacher.name, "enhancer": None if self.enhancer is None else self.enhancer.name}


def job_command() -> tuple[str, ...]:
    """The refinement job's command, run by the server's own interpreter."""
    return (sys.executable, "-m", "models.cli", "enroll")


def check_refinement_target(card: ModelCard, target: RefinementTarget, *, command: tuple[str, ...] | None = None) -> None:
    """ValueError (one line) when this server's jobs could not fit ``target``: a server that cannot refine at all, or the
    job command's dry run refusing the model, the teacher or the enhancer. The frames target needs no check."""
    if target.teacher is None:
        return
    problem = refinement_unavailable(card)
    if problem is not None:
        raise ValueError(f"--refine-teacher: this server cannot refine avatars: {problem}")
    arguments = [*(command or job_command()), "--model", str(card.model_path), *target.options(), "--dry-run"]
    try:
        finished = subprocess.run(arguments, capture_output=True, text=True, timeout=TARGET_CHECK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ValueError(f"--refine-teacher: the refinement's check could not run: {error}") from None
    if finished.returncode != 0:
        lines = [line for line in finished.stderr.splitlines() if line.strip()]
        raise ValueError(f"--refine-teacher: {lines[-1] if lines else f'the refinement check exited with status {finished.returncode}'}")


@dataclass
class RefinementJob:
    job_id: int
    avatar: int
    name: str
    steps: int
    folder: Path
    state: str = "queued"  # queued | running | done | failed | cancelled
    step: int = 0
    loss: float | None = None
    first_loss: float | None = None
    error: str | None = None
    started_at: float | None = None
    seconds: float | None = None
    process: subprocess.Popen | None = None
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=STDERR_LINES_KEPT))

    @property
    def input_path(self) -> Path:
        return self.folder / "job.in.npz"

    @property
    def output_path(self) -> Path:
        return self.folder / "job.out.npz"

    def as_dict(self) -> dict[str, object]:
        return {
            "job": self.job_id,
            "avatar": self.avatar,
            "name": self.name,
            "state": self.state,
            "step": self.step,
            "steps": self.steps,
            "loss": self.loss,
            "first_loss": self.first_loss,
            "seconds": self.seconds if self.seconds is not None else (time.monotonic() - self.started_at if self.started_at else None),
            "error": self.error,
        }


class RefinementJobs:
    """The server's refinement jobs: start, cancel, poll; ``close`` ends them all."""

    def __init__(
        self, *, card: ModelCard, command: tuple[str, ...] | None = None, threads: int = 0, target: RefinementTarget = RefinementTarget()
    ) -> None:
        self.card = card
        self.command = command or job_command()  # tests may pass another
        self.threads = threads
        self.target = target
        self.problem = refinement_unavailable(card)
        self._ids = itertools.count(1)
        self._jobs: dict[int, RefinementJob] = {}
        self._queue: deque[RefinementJob] = deque()
        self._lock = threading.Lock()
        self._root: Path | None = None

    @property
    def available(self) -> bool:
        return self.problem is None

    def _folder(self, job_id: int) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="megalive-refine-"))
        folder = self._root / f"job-{job_id}"
        folder.mkdir()
        return folder

    def start(self, *, avatar: int, name: str, frames: np.ndarray, landmarks: np.ndarray | None, identity: np.ndarray, steps: int) -> int:
        """Queue a job for ``avatar`` (its crops K×H×W×3 uint8, their landmarks, its one-shot tensor); returns its id."""
        if self.problem is not None:
            raise RefinementJobError(self.problem)
        job_id = next(self._ids)
        job = RefinementJob(job_id=job_id, avatar=avatar, name=name, steps=steps, folder=self._folder(job_id))
        write_input(RefinementInput(frames=frames, landmarks=landmarks, identity=identity.astype(np.float32)), job.input_path)
        with self._lock:
            self._jobs[job_id] = job
            self._queue.append(job)
        self._start_next()
        return job_id

    def _start_next(self) -> None:
        with self._lock:
            if any(job.state == "running" for job in self._jobs.values()) or not self._queue:
                return
            job = self._queue.popleft()
            job.state, job.started_at = "running", time.monotonic()
        arguments = [
            *self.command,
            "--model", str(self.card.model_path),
            "--job", str(job.input_path),
            "--out", str(job.output_path),
            "--steps", str(job.steps),
            "--nice", str(JOB_NICENESS),
            "--threads", str(self.threads),
            "--progress-lines",
            *self.target.options(),
        ]  # fmt: skip
        try:
            job.process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        except OSError as error:
            job.state, job.error = "failed", f"could not start the refinement: {error}"
            return
        threading.Thread(target=self._read_progress, args=(job,), daemon=True, name=f"refine-{job.job_id}").start()
        threading.Thread(target=self._read_errors, args=(job,), daemon=True, name=f"refine-{job.job_id}-err").start()

    @staticmethod
    def _read_progress(job: RefinementJob) -> None:
        assert job.process is not None and job.process.stdout is not None
        for line in job.process.stdout:
            entry = parse_line(line)
            if entry is None or "step" not in entry:
                continue
            job.step, job.loss = int(entry["step"]), float(entry["loss"])
            if job.first_loss is None:
                job.first_loss = job.loss

    @staticmethod
    def _read_errors(job: RefinementJob) -> None:
        assert job.process is not None and job.process.stderr is not None
        for line in job.process.stderr:
            if line.strip():
                job.stderr_tail.append(line.rstrip())

    def cancel(self, job_id: int) -> bool:
        """Stop a queued or running job (the avatar stays as the one-shot made it); False when it had already ended."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise KeyError(job_id)
            if job.state == "queued":
                self._queue.remove(job)
            elif job.state != "running":
                return False
            job.state = "cancelled"
        if job.process is not None:
            job.process.terminate()
            try:
                job.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
        job.seconds = time.monotonic() - job.started_at if job.started_at else 0.0
        self._start_next()
        return True

    def finished(self) -> list[tuple[RefinementJob, RefinementOutput]]:
        """Jobs whose process ended since the last call, with their results (the failed ones are marked, not returned)."""
        done: list[tuple[RefinementJob, RefinementOutput]] = []
        for job in [job for job in self._jobs.values() if job.state == "running"]:
            assert job.process is not None
            code = job.process.poll()
            if code is None:
                continue
            job.seconds = time.monotonic() - (job.started_at or time.monotonic())
            try:
                if code != 0:
                    raise RefinementJobError(job.stderr_tail[-1] if job.stderr_tail else f"the refinement exited with status {code}")
                output = read_output(job.output_path)
            except RefinementJobError as error:
                job.state, job.error = "failed", str(error)
            else:
                job.state = "done"
                done.append((job, output))
            self._start_next()
        self._forget_old()
        return done

    def _forget_old(self) -> None:
        ended = [job for job in self._jobs.values() if job.state in ("done", "failed", "cancelled")]
        for job in ended[:-FINISHED_JOBS_KEPT]:
            self._jobs.pop(job.job_id, None)
            shutil.rmtree(job.folder, ignore_errors=True)

    def as_dicts(self) -> list[dict[str, object]]:
        return [job.as_dict() for job in list(self._jobs.values())]

    def close(self) -> None:
        with self._lock:  # the queue first, so that ending the running job starts no other
            for job in self._queue:
                job.state = "cancelled"
            self._queue.clear()
        for job in list(self._jobs.values()):
            if job.state == "running":
                self.cancel(job.job_id)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
