"""A refinement job's files: written whole or not at all, read back exactly, malformed ones refused in one line; the bank
takes a refined tensor for one avatar and leaves the others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.avatar_bank import AvatarBank, AvatarBankError, AvatarRecord
from contract.refinement_job import (
    RefinementInput,
    RefinementJobError,
    RefinementOutput,
    done_line,
    parse_line,
    progress_line,
    read_input,
    read_output,
    write_input,
    write_output,
)


def test_job_files_round_trip_and_leave_no_temporary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    job = RefinementInput(
        frames=rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8),
        landmarks=rng.random((3, 68, 2)).astype(np.float32),
        identity=rng.standard_normal((4, 2, 2)).astype(np.float32),
    )
    write_input(job, tmp_path / "job.in.npz")
    back = read_input(tmp_path / "job.in.npz")
    np.testing.assert_array_equal(back.frames, job.frames)
    np.testing.assert_array_equal(back.landmarks, job.landmarks)
    np.testing.assert_array_equal(back.identity, job.identity)
    write_output(RefinementOutput(identity=job.identity * 2, summary={"steps": 3}), tmp_path / "job.out.npz")
    out = read_output(tmp_path / "job.out.npz")
    assert out.summary == {"steps": 3} and np.array_equal(out.identity, job.identity * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.in.npz", "job.out.npz"]


def test_bad_job_files_are_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(RefinementJobError, match="unreadable"):
        read_output(tmp_path / "junk.npz")
    with pytest.raises(RefinementJobError, match="not found"):
        read_input(tmp_path / "none.npz")
    bad = RefinementOutput(identity=np.full((2, 2, 2), np.nan, np.float32), summary={})
    write_output(bad, tmp_path / "nan.npz")
    with pytest.raises(RefinementJobError, match="finite"):
        read_output(tmp_path / "nan.npz")
    with pytest.raises(RefinementJobError, match="landmarks must be"):
        RefinementInput(
            frames=np.zeros((2, 8, 8, 3), np.uint8), landmarks=np.zeros((1, 68, 2), np.float32), identity=np.zeros((1, 1, 1), np.float32)
        )


def test_progress_lines_parse_and_anything_else_is_ignored() -> None:
    assert parse_line(progress_line(step=2, steps=5, loss=0.25)) == {"step": 2, "steps": 5, "loss": 0.25}
    assert parse_line(done_line({"steps": 5}))["done"] is True
    assert parse_line("UserWarning: something a library printed") is None and parse_line("[1, 2]") is None


def test_a_bank_takes_one_avatars_refined_tensor_and_keeps_the_rest() -> None:
    records = tuple(AvatarRecord(name=name, consent=None, provenance={"how": "test"}) for name in ("a", "b"))
    bank = AvatarBank(identity=np.zeros((2, 3, 2, 2), np.float32), thumbnails=np.zeros((2, 4, 4, 3), np.uint8), records=records)
    refined = bank.with_identity(1, identity=np.ones((3, 2, 2), np.float32), provenance={"how": "test", "refined": {"steps": 4}})
    assert refined.identity[1].min() == 1 and refined.identity[0].max() == 0 and bank.identity.max() == 0  # a new bank
    assert refined.records[1].provenance["refined"] == {"steps": 4} and refined.records[0] == records[0]
    with pytest.raises(AvatarBankError, match="no avatar 2"):
        bank.with_identity(2, identity=np.ones((3, 2, 2), np.float32), provenance={})
    with pytest.raises(AvatarBankError, match="identity tensor is"):
        bank.with_identity(0, identity=np.ones((3, 4, 4), np.float32), provenance={})
