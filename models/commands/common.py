"""What every `megalive-train` command shares: its refusal (one line, exit 2), the version, signal and process endings."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("megalive")
    except PackageNotFoundError:
        return "0+unknown"


def refuse(command: str, message: object) -> int:
    """Bad input of `megalive-train COMMAND`: one line on stderr, exit status 2."""
    print(f"megalive-train {command}: {message}", file=sys.stderr)
    return 2


def exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # the shell's status for a signalled process
