"""`megalive unreal package`: the folder you copy into an Unreal project.

Output layout (``out_dir``):

    megalive_bridge/            this folder's Python (no tests, no caches), importable in UE
        vendor/client/          byte-identical copies of the client/ and contract/ packages
        vendor/contract/        (client/vendor.py lists the files; one source of truth stays in the repository)
    MegaLiveTexture/            the optional C++ helper plugin, for <Project>/Plugins/

Each part is built under a temporary name and renamed into place, so an interrupted build never
leaves a half-written package behind under the final name.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from client.vendor import VENDORED_FILES, write_vendor_package

BRIDGE_DIR = Path(__file__).resolve().parent
PACKAGE_NAME = "megalive_bridge"
PLUGIN_NAME = "MegaLiveTexture"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", "*.partial", "Binaries", "Intermediate")


@dataclass(frozen=True)
class UnrealPackage:
    python_package: Path  # out_dir/megalive_bridge
    plugin: Path  # out_dir/MegaLiveTexture
    vendored: tuple[Path, ...]


def _replace_dir(staged: Path, final: Path) -> None:
    """Move a fully built folder into place, replacing an older build."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staged.rename(final)
        shutil.rmtree(old)
    else:
        staged.rename(final)


def build_unreal_bridge(out_dir: str | Path) -> UnrealPackage:
    """Copy the bridge (+ vendored client and contract) and the C++ plugin into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".megalive-package-", dir=out_dir) as staging_root:
        staging = Path(staging_root)
        python_package = staging / PACKAGE_NAME
        shutil.copytree(BRIDGE_DIR, python_package, ignore=_ignore_with_plugin)
        write_vendor_package(python_package, made_by="megalive unreal package")
        plugin = staging / PLUGIN_NAME
        shutil.copytree(BRIDGE_DIR / PLUGIN_NAME, plugin, ignore=_IGNORED)
        _replace_dir(python_package, out_dir / PACKAGE_NAME)
        _replace_dir(plugin, out_dir / PLUGIN_NAME)
    final = out_dir / PACKAGE_NAME
    return UnrealPackage(
        python_package=final, plugin=out_dir / PLUGIN_NAME, vendored=tuple(final / "vendor" / name for name in VENDORED_FILES)
    )


def _ignore_with_plugin(directory: str, names: list[str]) -> set[str]:
    """The Python package skips caches and the C++ plugin (that one is copied beside it)."""
    ignored = set(_IGNORED(directory, names))
    if Path(directory) == BRIDGE_DIR:
        ignored |= {name for name in names if name in (PLUGIN_NAME, "vendor")}
    return ignored
