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


def repack_installed_wheel(distribution: str, out_dir: Path, *, compresslevel: int | None = None) -> Path:
    """A wheel file rebuilt from an installed distribution (its RECORD lists every file), so the
    offline build has real cp311 wheels without any network. Same files, same tag as installed."""
    dist = importlib.metadata.distribution(distribution)
    wheel_info = dist.read_text("WHEEL") or ""
    tag = next(line.split(":", 1)[1].strip() for line in wheel_info.splitlines() if line.startswith("Tag:"))
    name = dist.metadata["Name"].replace("-", "_")
    path = out_dir / f"{name}-{dist.version}-{tag}.whl"
    site_packages = Path(dist.locate_file(""))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive:
        for entry in dist.files or ():
            relative = entry.as_posix()
            source = site_packages / entry
            if relative.startswith("..") or "__pycache__" in relative or not source.is_file():
                continue  # scripts outside site-packages and byte code are not part of the wheel we need
            archive.write(source, relative)  # keeps the Unix mode (Blender's installer drops it anyway)
    return path


def movie_colour(index: int) -> tuple[int, int, int]:
    """The flat colour of frame ``index`` of write_test_movie's clip (far apart, away from the ends)."""
    return (40 + (index * 37) % 176, 200 - (index * 23) % 160, 60 + (index * 53) % 150)


def write_test_movie(path: Path, *, frames: int, fps: int = 12, size: tuple[int, int] = (32, 32)) -> Path:
    """An H.264 MP4 of flat colour frames (lossy video keeps flat colours within a few levels)."""
    import imageio_ffmpeg
    import numpy as np

    writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, quality=10, macro_block_size=16)
    writer.send(None)
    for index in range(frames):
        writer.send(np.full((size[1], size[0], 3), movie_colour(index), dtype=np.uint8).tobytes())
    writer.close()
    return path


@pytest.fixture(scope="session")
def offline_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for distribution in ("pyzmq", "msgpack"):
        repack_installed_wheel(distribution, folder)
    repack_installed_wheel("imageio-ffmpeg", folder, compresslevel=1)  # its ffmpeg is 170 MB: compress fast
    return folder
