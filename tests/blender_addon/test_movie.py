"""The bpy-free movie decoder (blender_addon/movie.py): frame order, bounded cache, a frame not
decoded yet skips the tick, backward seeks, clamping at the end, unreadable files."""

from __future__ import annotations

import threading
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from blender_addon.movie import MAX_FRAME_PIXELS, MovieFrames, MovieSource, fitting_size
from client.live import DriverError
from tests.blender_addon.conftest import movie_colour, write_test_movie

FRAMES = 30


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_movie(tmp_path_factory.mktemp("movie") / "take.mp4", frames=FRAMES)


@pytest.fixture(scope="module")
def sequential(movie: Path) -> list[bytes]:
    reader = imageio_ffmpeg.read_frames(str(movie))
    next(reader)
    return [bytes(frame) for frame in reader]


def test_frames_come_in_order_and_match_a_sequential_decode(movie: Path, sequential: list[bytes]) -> None:
    assert len(sequential) == FRAMES
    frames = MovieFrames(movie)
    try:
        assert (frames.width, frames.height, frames.fps) == (32, 32, 12.0)
        for index in range(FRAMES):
            data = frames.frame(index, timeout_s=10)
            assert data == sequential[index]
            pixels = frames.raw_buffer(data).array()
            assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
            assert np.abs(pixels.astype(int) - movie_colour(index)).max() <= 6
        assert frames.reader_starts == 1  # one ffmpeg run for a sequential read
    finally:
        frames.close()


def test_the_cache_is_bounded_and_the_end_clamps(movie: Path, sequential: list[bytes]) -> None:
    frames = MovieFrames(movie, max_cached_bytes=3 * 32 * 32 * 3, lookahead=8)
    try:
        assert frames.max_cached_frames == 3 and frames.lookahead == 2
        for index in range(FRAMES):
            frames.frame(index, timeout_s=10)
            assert len(frames.cached_indices()) <= 3
        assert frames.frame(FRAMES + 50, timeout_s=10) == sequential[-1]  # past the end: the last frame
        assert frames.frame_count == FRAMES and frames.clamp(-4) == 0
    finally:
        frames.close()


def test_backward_and_far_seeks_restart_ffmpeg_at_the_right_frame(movie: Path, sequential: list[bytes]) -> None:
    frames = MovieFrames(movie, max_cached_bytes=4 * 32 * 32 * 3, lookahead=1)
    try:
        assert frames.frame(27, timeout_s=10) == sequential[27]  # far ahead: seeks rather than decoding 0..27
        starts = frames.reader_starts
        assert starts == 2 and 5 not in frames.cached_indices()
        assert frames.frame(5, timeout_s=10) == sequential[5]  # backwards: evicted, so ffmpeg restarts at 5
        assert frames.reader_starts == starts + 1
        assert frames.frame(6, timeout_s=10) == sequential[6]  # and goes on from there
        assert frames.reader_starts == starts + 1
    finally:
        frames.close()


def test_a_frame_not_decoded_yet_skips_the_tick() -> None:
    release = threading.Event()
    size = 4 * 2 * 3

    def slow_reader(path: Path, start: int, fps: float, scale_to: tuple[int, int] | None):
        def frames():
            for index in range(start, 10):
                release.wait(5)
                yield bytes([index]) * size

        return {"size": (4, 2), "fps": 10.0}, frames()

    movie = MovieFrames(Path(__file__), reader=slow_reader)  # any existing file: the reader is fake
    scene_frame = 13
    source = MovieSource(movie, current_frame=lambda: scene_frame, frame_start=10)
    try:
        assert source.frame_key() is None  # index 3 is being decoded: the tick sends nothing, waits for nothing
        release.set()
        assert source.payload(13).array()[0, 0, 0] == 3  # the bake's payload waits for it
        assert source.frame_key() == 13
        buffer = source.payload(13)
        assert buffer.dtype == "|u1" and buffer.shape == (2, 4, 3) and bytes(buffer.data) == bytes([3]) * size
        scene_frame = 8  # before the clip: its first frame
        assert source.payload(8).array()[0, 0, 0] == 0
    finally:
        source.close()


def test_an_unreadable_file_is_a_driver_error(tmp_path: Path) -> None:
    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(b"this is not a movie" * 100)
    with pytest.raises(DriverError, match="cannot read movie clip.mp4"):
        MovieFrames(garbage)
    with pytest.raises(DriverError, match="no such file"):
        MovieFrames(tmp_path / "missing.mp4")


def test_a_movie_too_large_for_a_driver_frame_is_decoded_scaled_down_with_its_aspect(movie: Path, tmp_path: Path) -> None:
    assert fitting_size(7680, 4320, max_pixels=MAX_FRAME_PIXELS) == (3840, 2160)  # 8K -> 4K, within the wire's limits
    assert fitting_size(3840, 2160, max_pixels=MAX_FRAME_PIXELS) is None and MAX_FRAME_PIXELS * 3 <= 32 * 1024 * 1024
    wide = write_test_movie(tmp_path / "wide.mp4", frames=4, size=(64, 32))
    frames = MovieFrames(wide, max_pixels=800, max_cached_bytes=2 * 40 * 20 * 3, lookahead=1)  # as if 8K: 2048 px > 800
    try:
        assert frames.stored_size == (64, 32) and (frames.width, frames.height) == frames.scaled_to == (40, 20)
        for index in (0, 3, 1):  # a backward seek restarts ffmpeg: still scaled
            pixels = frames.raw_buffer(frames.frame(index, timeout_s=10)).array()
            assert pixels.shape == (20, 40, 3)
            assert np.abs(pixels.astype(int) - movie_colour(index)).max() <= 8
        assert frames.reader_starts >= 2
    finally:
        frames.close()
