"""C2PA manifests on baked files (PNG frames, the demo MP4) with c2pa-python: signing keys, signing, reading.

A manifest names the tool (MegaLive and its version), the avatar(s) (name, id) and the SHA-256 of each avatar's
consent record (contract/avatar_bank.py), or says "synthetic avatar, no person" for the shipped synthetic ones.
It is signed with an ES256 key: the one `megalive keys signing` makes (a local CA and a signing certificate it
issued, since C2PA refuses a self-signed end-entity certificate) or the user's own certificate chain and key.

Reading tells three cases apart: no manifest; a manifest whose signature and hashes check out (``valid``; with
``trusted`` False when its certificate chains to no trust anchor known here, as a local CA never does); and an
invalid one (the file changed after signing, a broken signature), with the validation codes that failed.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from server import __version__

TOOL = "MegaLive"
AVATAR_ASSERTION = "org.megalive.avatar"
NO_PERSON = "synthetic avatar, no person"
# IPTC's digital source type for media a trained model made (C2PA's list of source types).
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".mp4": "video/mp4"}
UNTRUSTED = "signingCredential.untrusted"
CERT_FILE, KEY_FILE = "megalive-signing.pem", "megalive-signing.key"


class ManifestError(Exception):
    """Signing or key making failed; one line for the user."""


def unavailable() -> str | None:
    """Why C2PA manifests cannot be made or read here, or None."""
    try:
        import c2pa  # noqa: F401
    except ImportError as error:
        return f"c2pa-python is not installed ({error}); install the 'provenance' extra"
    return None


def default_signing_dir() -> Path:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "megalive" / "signing"


def make_signing_keys(out_dir: Path, *, name: str = "MegaLive user", days: int = 3650) -> tuple[Path, Path]:
    """An ES256 (P-256) signing key and a certificate chain for it (signing certificate, then a local CA that issued
    it) in ``out_dir``: CERT_FILE and KEY_FILE (mode 0600). Refuses to overwrite."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_path, key_path = out_dir / CERT_FILE, out_dir / KEY_FILE
    if cert_path.exists() or key_path.exists():
        raise ManifestError(f"{out_dir} already holds a signing key; remove it first or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)

    def subject(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        )

    def certificate(subject_name: x509.Name, issuer: x509.Name, public_key, signing_key) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject_name)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = subject(f"{TOOL} local signing CA")
    ca = (
        certificate(ca_name, ca_name, ca_key.public_key(), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False, ca=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        certificate(subject(f"{TOOL} signer"), ca_name, key.public_key(), ca_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@dataclass(frozen=True)
class AvatarNote:
    """One avatar a file shows: what its manifest says about it."""

    id: int
    name: str
    consent_sha256: str | None  # None: a shipped synthetic avatar, no person behind it

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "consent_sha256": self.consent_sha256 or NO_PERSON}


def manifest_definition(title: str, avatars: Sequence[AvatarNote]) -> dict:
    return {
        "claim_generator_info": [{"name": TOOL, "version": __version__}],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA}]}},
            {"label": AVATAR_ASSERTION, "data": {"tool": f"{TOOL} {__version__}", "avatars": [a.as_dict() for a in avatars]}},
        ],
    }


class ManifestSigner:
    """A signing key and certificate chain, loaded once, that signs files or encoded pictures in memory (the server's
    signed PNG textures: one per baked frame). The SDK's automatic thumbnail is off: it made a 256×256 PNG frame's
    manifest ten times the frame's size and took 200 ms; without it a manifest adds about 3 KB and 2 ms (measured
    on the 2-core box)."""

    def __init__(self, *, cert_path: Path, key_path: Path) -> None:
        import c2pa

        self.cert_path, self.key_path = cert_path, key_path
        try:
            info = c2pa.C2paSignerInfo(alg=b"es256", sign_cert=cert_path.read_bytes(), private_key=key_path.read_bytes(), ta_url=None)
            self._signer = c2pa.Signer.from_info(info)
        except (OSError, c2pa.C2paError) as error:
            raise ManifestError(f"cannot use the signing key {key_path} / certificate {cert_path}: {error}") from None
        self._context = c2pa.Context(settings=c2pa.Settings().set("builder.thumbnail.enabled", "false"))
        self._lock = threading.Lock()  # one signing at a time: the SDK's signer is not documented as thread-safe

    def sign_stream(self, source: BinaryIO, out: BinaryIO, mime: str, *, title: str, avatars: Sequence[AvatarNote]) -> None:
        import c2pa

        try:
            with self._lock, c2pa.Builder(json.dumps(manifest_definition(title, avatars)), context=self._context) as builder:
                builder.sign(self._signer, mime, source, out)
        except c2pa.C2paError as error:
            raise ManifestError(f"signing {title} failed: {error}") from None

    def sign_bytes(self, data: bytes, mime: str, *, title: str, avatars: Sequence[AvatarNote]) -> bytes:
        """``data`` (an encoded PNG/JPEG) with a C2PA manifest, in memory."""
        out = io.BytesIO()
        self.sign_stream(io.BytesIO(data), out, mime, title=title, avatars=avatars)
        return out.getvalue()

    def close(self) -> None:
        self._signer.close()


def sign_file(source: Path, dest: Path, *, avatars: Sequence[AvatarNote], cert_path: Path, key_path: Path) -> None:
    """Write ``dest``: ``source`` (PNG, JPEG or MP4) with a C2PA manifest naming the tool and the avatars. ``dest``
    may be ``source`` (it is replaced through a temporary file)."""
    mime = MIME_TYPES.get(source.suffix.lower())
    if mime is None:
        raise ManifestError(f"cannot sign {source}: only {', '.join(MIME_TYPES)} files")
    signer = ManifestSigner(cert_path=cert_path, key_path=key_path)
    temporary = dest.with_name(f".{dest.name}.signing")
    try:
        with open(source, "rb") as src, open(temporary, "w+b") as out:
            signer.sign_stream(src, out, mime, title=dest.name, avatars=avatars)
        temporary.replace(dest)
    finally:
        temporary.unlink(missing_ok=True)
        signer.close()


@dataclass(frozen=True)
class ManifestReport:
    present: bool
    valid: bool = False
    trusted: bool = False
    signer: str = ""  # the signing certificate's common name and issuer
    tool: str = ""
    avatars: tuple[dict, ...] = ()
    failures: tuple[str, ...] = field(default=())  # validation codes that failed (invalid manifests)

    def as_dict(self) -> dict:
        return {
            "present": self.present,
            "valid": self.valid,
            "trusted": self.trusted,
            "signer": self.signer,
            "tool": self.tool,
            "avatars": list(self.avatars),
            "failures": list(self.failures),
        }


def read_manifest(path: Path) -> ManifestReport:
    """The active C2PA manifest of a file, checked; ``present`` False when it has none."""
    import c2pa

    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None:
        return ManifestReport(present=False)
    try:
        with open(path, "rb") as stream, c2pa.Reader(mime, stream) as reader:
            state = reader.get_validation_state()
            results = reader.get_validation_results() or {}
            store = json.loads(reader.json())
    except c2pa.C2paError as error:
        if "ManifestNotFound" in type(error).__name__ or "no JUMBF" in str(error) or "not found" in str(error).lower():
            return ManifestReport(present=False)
        return ManifestReport(present=True, failures=(f"{type(error).__name__}: {error}",))
    active = (store.get("manifests") or {}).get(store.get("active_manifest") or "", {})
    if not active:
        return ManifestReport(present=False)
    signature = active.get("signature_info") or {}
    ours = next((a.get("data") or {} for a in active.get("assertions", []) if a.get("label") == AVATAR_ASSERTION), {})
    generator = (active.get("claim_generator_info") or [{}])[0]
    codes = [item.get("code", "?") for item in (results.get("activeManifest") or {}).get("failure", [])]
    untrusted = UNTRUSTED in codes  # a certificate no trust anchor here vouches for: said apart, not a failure
    failures = tuple(code for code in codes if code != UNTRUSTED)
    return ManifestReport(
        present=True,
        valid=not failures and (state in ("Valid", "Trusted") or untrusted),
        trusted=state == "Trusted" and not untrusted,
        signer=f"{signature.get('common_name', '?')} (issuer {signature.get('issuer', '?')})",
        tool=ours.get("tool") or f"{generator.get('name', '?')} {generator.get('version', '')}".strip(),
        avatars=tuple(ours.get("avatars") or ()),
        failures=failures,
    )
