"""The avatar bank: written and read back, appended to, refused when corrupt or when an avatar cannot join it, and
never half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.avatar_bank import (
    MAX_NAME_CHARACTERS,
    AvatarBank,
    AvatarBankError,
    AvatarRecord,
    ConsentRecord,
    bank_path,
    read_bank,
    write_bank,
)

SHAPE = (4, 8, 8)  # C_id×S×S


def two_avatars() -> AvatarBank:
    rng = np.random.default_rng(0)
    return AvatarBank(
        identity=rng.standard_normal((2, *SHAPE)).astype(np.float32),
        thumbnails=rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8),
        records=(
            AvatarRecord(name="Ada", consent=None, provenance={"how": "trained with the student", "command": "make default-model"}),
            AvatarRecord(name="Basil", consent=None, provenance={"how": "trained with the student"}),
        ),
    )


def test_a_bank_reads_back_as_written_and_grows_by_appending(tmp_path: Path) -> None:
    path = bank_path(tmp_path / "student.onnx")
    assert path.name == "student.avatars.npz"
    bank = two_avatars()
    write_bank(bank, path)
    back = read_bank(path)
    assert back.names == ("Ada", "Basil") and back.identity_shape == SHAPE and back.records == bank.records
    np.testing.assert_array_equal(back.identity, bank.identity)
    np.testing.assert_array_equal(back.thumbnails, bank.thumbnails)
    consent = ConsentRecord.of(
        name="Cleo", statement="  I am Cleo and I agree to this avatar of my face.  ", recorded_at="2026-11-30T05:00:00Z"
    )
    assert consent.statement.startswith("I am") and len(consent.sha256) == 64
    grown = back.with_avatar(
        identity=np.ones(SHAPE, np.float32),
        thumbnail=np.zeros((16, 16, 3), np.uint8),
        record=AvatarRecord(name="Cleo", consent=consent, provenance={"how": "enrolled one-shot", "frames_sha256": "ab" * 32}),
    )
    write_bank(grown, path)
    again = read_bank(path)
    assert again.names == ("Ada", "Basil", "Cleo") and again.records[2].consent == consent
    np.testing.assert_array_equal(again.identity[:2], bank.identity)  # ids are rows: the old ones do not move
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_an_avatar_that_cannot_join_is_refused_in_one_line() -> None:
    bank = two_avatars()
    good = {"identity": np.zeros(SHAPE, np.float32), "thumbnail": np.zeros((16, 16, 3), np.uint8)}
    refusals = [
        ({**good, "record": AvatarRecord(name="Ada", consent=None)}, "already in use"),
        ({**good, "record": AvatarRecord(name=" ", consent=None)}, "printable characters"),
        ({**good, "record": AvatarRecord(name="x" * (MAX_NAME_CHARACTERS + 1), consent=None)}, "printable characters"),
        ({**good, "identity": np.zeros((4, 4, 4), np.float32), "record": AvatarRecord(name="New", consent=None)}, "identity tensor"),
        ({**good, "thumbnail": np.zeros((8, 8, 3), np.uint8), "record": AvatarRecord(name="New", consent=None)}, "thumbnail"),
    ]
    for arguments, message in refusals:
        with pytest.raises(AvatarBankError, match=message):
            bank.with_avatar(**arguments)
    with pytest.raises(AvatarBankError, match="consent statement is required"):
        ConsentRecord.of(name="New", statement="   ", recorded_at="2026-11-30T05:00:00Z")


def test_a_missing_or_corrupt_bank_is_named_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(AvatarBankError, match="not found"):
        read_bank(tmp_path / "none.avatars.npz")
    broken = tmp_path / "broken.avatars.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(AvatarBankError, match=r"broken\.avatars\.npz is unreadable") as caught:
        read_bank(broken)
    assert "\n" not in str(caught.value)
    other = tmp_path / "other.avatars.npz"
    np.savez(other, identity=np.zeros((1, *SHAPE), np.float32), thumbnails=np.zeros((1, 16, 16, 3), np.uint8),
             records=np.frombuffer(b'{"format": "something-else"}', dtype=np.uint8))  # fmt: skip
    with pytest.raises(AvatarBankError, match="not a megalive-avatar-bank"):
        read_bank(other)
    pickled = tmp_path / "pickled.avatars.npz"
    np.savez(pickled, identity=np.array([object()], dtype=object), thumbnails=np.zeros(1), records=np.zeros(1, np.uint8))
    with pytest.raises(AvatarBankError, match="unreadable"):
        read_bank(pickled)  # object arrays would need pickle: refused
