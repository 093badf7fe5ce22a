"""Blender extension tests run the PyPI `bpy` module in-process.

bpy reads and writes the user's config/extension folders under HOME when it is imported, so HOME
and Blender's user folders point at a fresh temporary folder before anything imports bpy."""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
import zipfile
from pathlib import Path

import pytest

_BLENDER_HOME = Path(tempfile.mkdtemp(prefix="megalive-blender-home-"))
os.environ["HOME"] = str(_BLENDER_HOME)
for _variable, _folder in (("BLENDER_USER_RESOURCES", "resources"), ("BLENDER_USER_CONFIG", "config"),
                           ("BLENDER_USER_SCRIPTS", "scripts"), ("BLENDER_USER_EXTENSIONS", "extensions"),
                           ("BLENDER_USER_DATAFILES", "datafiles")):
    os.environ[_variable] = str(_BLENDER_HOME / _folder)


def repack_installed_wheel(distribution: str, out_dir: Path) -> Path:
    """A wheel file rebuilt from an installed distribution (its RECORD lists every file), so the
    offline build has real cp311 wheels without any network. Same files, same tag as installed."""
    dist = importlib.metadata.distribution(distribution)
    wheel_info = dist.read_text("WHEEL") or ""
    tag = next(line.split(":", 1)[1].strip() for line in wheel_info.splitlines() if line.startswith("Tag:"))
    name = dist.metadata["Name"].replace("-", "_")
    path = out_dir / f"{name}-{dist.version}-{tag}.whl"
    site_packages = Path(dist.locate_file(""))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entry in dist.files or ():
            relative = entry.as_posix()
            source = site_packages / entry
            if relative.startswith("..") or "__pycache__" in relative or not source.is_file():
                continue  # scripts outside site-packages and byte code are not part of the wheel we need
            archive.write(source, relative)
    return path


@pytest.fixture(scope="session")
def offline_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for distribution in ("pyzmq", "msgpack"):
        repack_installed_wheel(distribution, folder)
    return folder
