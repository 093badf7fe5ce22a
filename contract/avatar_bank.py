"""The avatar bank (model contract v2, DESIGN §4.3): every avatar a v2 model can draw, in one file beside its graphs.

    <stem>.avatars.npz   (numpy's npz: plain arrays, read with allow_pickle=False; no pickle anywhere)
        identity     N×C_id×S×S float32   what the student's graph takes as its ``identity`` input, one row per avatar
        thumbnails   N×T×T×3 uint8        what `avatars` shows
        records      UTF-8 JSON bytes     {"format", "format_version", "avatars": [AvatarRecord as a dict, ...]}

An AvatarRecord is an avatar's name, its consent record (the statement the person enrolling it confirmed, when and a
SHA-256 naming statement and name together: what provenance manifests cite) and its provenance (how it was made: the
shipped training command, or the enrollment with its frames' digest and refinement). Avatars are appended, never
renumbered: an avatar's id is its row. Writing goes to a temporary file in the same folder, flushed, then renamed
over the bank, so a crash leaves the old bank or the new one, never half of either.

Standard library and numpy only (the server reads and appends; the exporter writes the shipped avatars).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

BANK_FORMAT = "megalive-avatar-bank"
BANK_FORMAT_VERSION = 1
MAX_NAME_CHARACTERS = 64
MAX_CONSENT_CHARACTERS = 2000


class AvatarBankError(ValueError):
    """A bank that cannot be read or an avatar that cannot join it; the message is one line for the user."""


def bank_path(model_path: Path) -> Path:
    """student.onnx -> student.avatars.npz: the bank sits beside the model's graphs."""
    return model_path.with_name(f"{model_path.stem}.avatars.npz")


@dataclass(frozen=True, kw_only=True)
class ConsentRecord:
    statement: str  # what the person enrolling confirmed, word for word
    recorded_at: str  # ISO 8601, UTC
    sha256: str  # of name and statement: what a provenance manifest names

    @classmethod
    def of(cls, *, name: str, statement: str, recorded_at: str) -> ConsentRecord:
        statement = statement.strip()
        if not statement:
            raise AvatarBankError("a consent statement is required to enroll a face (the person's own words, or yours for your face)")
        if len(statement) > MAX_CONSENT_CHARACTERS:
            raise AvatarBankError(f"the consent statement is {len(statement)} characters; at most {MAX_CONSENT_CHARACTERS}")
        digest = hashlib.sha256(json.dumps({"name": name, "statement": statement}, sort_keys=True).encode("utf-8")).hexdigest()
        return cls(statement=statement, recorded_at=recorded_at, sha256=digest)


@dataclass(frozen=True, kw_only=True)
class AvatarRecord:
    name: str
    consent: ConsentRecord | None  # None only for the shipped synthetic avatars (no person behind them)
    provenance: dict[str, object] = field(default_factory=dict)  # how it was made (JSON values)


@dataclass(frozen=True, kw_only=True)
class AvatarBank:
    identity: np.ndarray  # N×C_id×S×S float32
    thumbnails: np.ndarray  # N×T×T×3 uint8
    records: tuple[AvatarRecord, ...]

    def __post_init__(self) -> None:
        count = len(self.records)
        if self.identity.ndim != 4 or self.identity.shape[0] != count or self.identity.dtype != np.float32:
            raise AvatarBankError(f"identity must be {count}×C×S×S float32, got {self.identity.shape} {self.identity.dtype}")
        if (
            self.thumbnails.ndim != 4
            or self.thumbnails.shape[0] != count
            or self.thumbnails.shape[3] != 3
            or self.thumbnails.dtype != np.uint8
        ):
            raise AvatarBankError(f"thumbnails must be {count}×T×T×3 uint8, got {self.thumbnails.shape} {self.thumbnails.dtype}")
        names = [record.name for record in self.records]
        if len(set(names)) != len(names):
            raise AvatarBankError("two avatars in the bank share a name")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(record.name for record in self.records)

    @property
    def identity_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.identity.shape[1:]
        return (int(channels), int(height), int(width))

    def with_avatar(self, *, identity: np.ndarray, thumbnail: np.ndarray, record: AvatarRecord) -> AvatarBank:
        """A new bank with one more avatar (its id: the old count). Refuses a name in use or a wrong shape."""
        check_name(record.name, taken=self.names)
        if identity.shape != self.identity.shape[1:]:
            raise AvatarBankError(f"the identity tensor is {identity.shape}; this model's are {self.identity.shape[1:]}")
        if thumbnail.shape != self.thumbnails.shape[1:]:
            raise AvatarBankError(f"the thumbnail is {thumbnail.shape}; this bank's are {self.thumbnails.shape[1:]}")
        return replace(
            self,
            identity=np.concatenate([self.identity, identity[None].astype(np.float32)]),
            thumbnails=np.concatenate([self.thumbnails, thumbnail[None].astype(np.uint8)]),
            records=(*self.records, record),
        )

    def with_identity(self, index: int, *, identity: np.ndarray, provenance: dict[str, object]) -> AvatarBank:
        """A new bank where avatar ``index`` has another identity tensor and provenance (a refined enrollment)."""
        if not 0 <= index < len(self.records):
            raise AvatarBankError(f"no avatar {index} in this bank of {len(self.records)}")
        if identity.shape != self.identity.shape[1:]:
            raise AvatarBankError(f"the identity tensor is {identity.shape}; this model's are {self.identity.shape[1:]}")
        tensors = self.identity.copy()
        tensors[index] = identity
        records = list(self.records)
        records[index] = replace(records[index], provenance=provenance)
        return replace(self, identity=tensors, records=tuple(records))


def check_name(name: str, *, taken: tuple[str, ...]) -> None:
    """An avatar name: 1 to MAX_NAME_CHARACTERS printable characters, not one already in the bank."""
    if not name.strip() or len(name) > MAX_NAME_CHARACTERS or not name.isprintable():
        raise AvatarBankError(f"an avatar name is 1 to {MAX_NAME_CHARACTERS} printable characters, got {name!r}")
    if name in taken:
        raise AvatarBankError(f"the name {name!r} is already in use (avatars: {', '.join(taken)})")


def _record_from_dict(entry: dict) -> AvatarRecord:
    consent = entry.get("consent")
    return AvatarRecord(
        name=str(entry["name"]),
        consent=None if consent is None else ConsentRecord(**{key: str(consent[key]) for key in ("statement", "recorded_at", "sha256")}),
        provenance=dict(entry.get("provenance") or {}),
    )


def read_bank(path: Path) -> AvatarBank:
    """The bank at ``path``; AvatarBankError (one line naming the file) when it is missing, corrupt or of another format."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            identity, thumbnails, raw = arrays["identity"], arrays["thumbnails"], arrays["records"]
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except FileNotFoundError:
        raise AvatarBankError(f"avatar bank not found: {path}") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise AvatarBankError(
            f"avatar bank {path} is unreadable: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != BANK_FORMAT:
        raise AvatarBankError(f"{path} is not a {BANK_FORMAT} file")
    if meta.get("format_version") != BANK_FORMAT_VERSION:
        raise AvatarBankError(f"{path}: bank version {meta.get('format_version')!r}, this code reads {BANK_FORMAT_VERSION}")
    try:
        records = tuple(_record_from_dict(entry) for entry in meta["avatars"])
    except (KeyError, TypeError) as error:
        raise AvatarBankError(f"{path}: malformed avatar record ({error})") from None
    try:
        return AvatarBank(identity=identity, thumbnails=thumbnails, records=records)
    except AvatarBankError as error:
        raise AvatarBankError(f"{path}: {error}") from None


def save_bank(bank: AvatarBank, handle: BinaryIO) -> None:
    """The bank's bytes into an open binary file (write_bank's, and the exporter's staged file)."""
    meta = {"format": BANK_FORMAT, "format_version": BANK_FORMAT_VERSION, "avatars": [asdict(record) for record in bank.records]}
    records = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
    np.savez(handle, identity=bank.identity, thumbnails=bank.thumbnails, records=records)


def write_bank(bank: AvatarBank, path: Path) -> None:
    """Write the bank to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        save_bank(bank, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
