"""Fixtures of the model tests: a tiny paired dataset and a tiny trained student, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.data.paired import SynthConfig, write_paired_dataset
from models.megaportraits.train_student import StudentTrainConfig, train_student


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synth"
    write_paired_dataset(out, SynthConfig(resolution=64, num_avatars=3, num_driver_identities=6, num_motions=48, batch_size=16),
                         command="tests: write_paired_dataset", progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "student"
    train_student(StudentTrainConfig(data=str(tiny_dataset), run_dir=str(run), preset="tiny", steps=100, batch_size=8,
                                     learning_rate=3e-3, log_every=10, checkpoint_every=50, workers=0, command="tests"),
                  progress=False)
    return run
