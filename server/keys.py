"""CURVE keypairs for remote clients (DESIGN §3, Security).

A keypair is two pyzmq certificate files: ``NAME.key`` (the public key, safe to hand out) and
``NAME.key_secret`` (public and secret, mode 0600). The server loads its secret file and an allow
folder of client public ``.key`` files; pyzmq's own ZAP authenticator checks each client's key
against that folder (nothing here re-implements the handshake or the check).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class KeyFileError(ValueError):
    """A key file or allow folder that cannot be used; the message is one line naming it."""


@dataclass(frozen=True)
class CurveServerKeys:
    """What a CURVE server needs: its own keypair (Z85) and the folder of allowed client public keys."""

    public: bytes
    secret: bytes
    allow_dir: Path

    def allowed_keys(self) -> int:
        """How many client public keys the allow folder holds now."""
        return len(list(self.allow_dir.glob("*.key")))


def new_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into ``directory`` (created 0700 if missing); refuses to overwrite."""
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name")
    if not zmq.has("curve"):
        raise KeyFileError("this pyzmq has no CURVE support")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_path, secret_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            raise KeyFileError(f"{path} exists; pick another --name or remove it first")
    # pyzmq writes the secret file 0600 itself; chmod again so an unusual umask can never widen it.
    written_public, written_secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(written_secret, 0o600)
    return Path(written_public), Path(written_secret)


def _load(path: Path, *, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as error:
        raise KeyFileError(f"cannot read key file {path}: {error}") from None
    if need_secret and not secret:
        raise KeyFileError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_server_keys(*, secret_file: Path, allow_dir: Path) -> CurveServerKeys:
    """The server's keypair from its .key_secret file, and the allow folder; KeyFileError if unusable."""
    if not secret_file.is_file():
        raise KeyFileError(f"no server key file {secret_file} (make one with: megalive keys new DIR --name server)")
    mode = secret_file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{secret_file} is readable by others (mode {stat.filemode(mode)}); chmod 600 it")
    public, secret = _load(secret_file, need_secret=True)
    assert secret is not None
    if not allow_dir.is_dir():
        raise KeyFileError(f"allow folder {allow_dir} does not exist (put allowed clients' .key files there)")
    keys = CurveServerKeys(public=public, secret=secret, allow_dir=allow_dir)
    for public_file in allow_dir.glob("*.key"):
        _load(public_file, need_secret=False)  # a broken file in the allow folder is said now, not at the first client
    return keys


def serve_with_curve(socket: zmq.Socket, context: zmq.Context, keys: CurveServerKeys, *, log_name: str) -> ThreadAuthenticator:
    """Make ``socket`` a CURVE server that admits only the public keys in ``keys.allow_dir``; returns the started
    authenticator (ZeroMQ's ZAP handler on its own thread), for the caller to stop."""
    authenticator = ThreadAuthenticator(context, log=logging.getLogger(log_name))
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(keys.allow_dir))
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True
    return authenticator
