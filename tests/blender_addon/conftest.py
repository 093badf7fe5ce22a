"""Blender extension tests run the PyPI `bpy` module in-process.

bpy reads and writes the user's config/extension folders under HOME when it is imported, so HOME
and Blender's user folders point at a fresh temporary folder before anything imports bpy."""

from __future__ import annotations

from pathlib import Path

import pytest

from blender_addon.package import private_blender_home, repack_installed_wheel

private_blender_home()  # before anything imports bpy


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
