"""Which addresses the server may bind: loopback, private ipc and inproc; any other host only with CURVE.

An ipc:// socket is a file: in a folder others can write, another local user could squat or replace it.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path


class BindRefused(ValueError):
    """A bind address the service will not use, or could not bind; the message is one line."""


def _check_ipc_path(address: str) -> None:
    """ipc:// sockets are files: in a folder others can write, another local user can squat or replace them."""
    path = address[len("ipc://") :]
    if path.startswith("@"):
        raise BindRefused(f"refusing {address}: abstract ipc sockets are open to every local user; use ipc:///PRIVATE/FOLDER/NAME")
    folder = Path(path).parent
    try:
        info = folder.stat()
    except OSError:
        raise BindRefused(f"refusing {address}: folder {folder} does not exist") from None
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BindRefused(
            f"refusing {address}: {folder} is not a private folder of this user (others could replace the socket); "
            "use a folder with mode 700, e.g. under $XDG_RUNTIME_DIR"
        )


def is_loopback_tcp(address: str) -> bool:
    """Whether a tcp://HOST:PORT address names this machine's loopback (localhost, 127.x, ::1)."""
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_address(address: str, *, curve: bool = False) -> None:
    """Loopback, private ipc and inproc; any other host only with CURVE keys (frames would travel in clear)."""
    if address.startswith("inproc://"):
        return
    if address.startswith("ipc://"):
        _check_ipc_path(address)
        return
    if not address.startswith("tcp://"):
        raise BindRefused(f"unsupported bind address {address!r}: use tcp://127.0.0.1:PORT")
    if curve or is_loopback_tcp(address):
        return
    raise BindRefused(
        f"refusing to bind {address} without CURVE keys (frames would travel unencrypted): "
        "pass --curve-secret FILE --allow DIR, or bind tcp://127.0.0.1:PORT"
    )
