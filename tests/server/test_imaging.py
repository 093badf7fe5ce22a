"""Texture pixels from engine outputs: OpenCV's one pass and numpy's give the same bytes, near-ties included."""

from __future__ import annotations

import numpy as np
import pytest

from server import imaging


def _outputs(batch: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    rgb = generator.uniform(-0.2, 1.2, (batch, 3, size, size)).astype(np.float32)  # out of range too: clipped
    alpha = generator.uniform(0.0, 1.0, (batch, 1, size, size)).astype(np.float32)
    # Near-halves (a float32 product would round them to k + 0.5; the exact one lies just off) and exact steps.
    halves = ((np.arange(255, dtype=np.float32) + np.float32(0.5)) / np.float32(255.0)).astype(np.float32)
    halves = halves[(halves * np.float32(255.0)) % 1 == 0.5]
    rgb.reshape(-1)[: halves.size] = halves
    rgb.reshape(-1)[halves.size : halves.size + 256] = np.arange(256, dtype=np.float32) / np.float32(255.0)
    return rgb, alpha


def test_opencv_and_numpy_give_the_same_bytes() -> None:
    cv2 = pytest.importorskip("cv2")
    rgb, alpha = _outputs(batch=3, size=64, seed=0)
    expected = imaging._texture_pixels_numpy(rgb, alpha)
    np.testing.assert_array_equal(imaging._texture_pixels_opencv(cv2, rgb, alpha), expected)
    np.testing.assert_array_equal(imaging.to_texture_pixels(rgb, alpha), expected)


def test_pixels_are_rounded_to_nearest_and_clipped() -> None:
    rgb = np.array([-0.5, 0.0, 0.5, 1.0, 2.0, 3.0 / 255.0], np.float32).reshape(1, 3, 1, 2)
    alpha = np.array([0.25, 1.0], np.float32).reshape(1, 1, 1, 2)
    pixels = imaging._texture_pixels_numpy(rgb, alpha)  # 1×1×2×4
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 1, 2, 4)
    # Channel-major input [r0 r1 | g0 g1 | b0 b1] -> pixel 0 = (r0, g0, b0, a0).
    assert pixels[0, 0, 0].tolist() == [0, 128, 255, 64]  # -0.5 clipped; 127.5 -> 128; 2.0 clipped; 63.75 -> 64
    assert pixels[0, 0, 1].tolist() == [0, 255, 3, 255]
    np.testing.assert_array_equal(imaging.to_texture_pixels(rgb, alpha), pixels)
