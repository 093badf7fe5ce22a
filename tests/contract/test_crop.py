"""contract.landmarks.crop_square: the one crop both the server's live capture and training data preparation cut with."""

from __future__ import annotations

import numpy as np
import pytest

from contract.landmarks import crop_square


def test_crop_square_samples_the_box_and_pads_outside_the_frame() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    # The box that is exactly the frame, at its own size, is the frame itself.
    np.testing.assert_array_equal(crop_square(frame, (32.0, 32.0, 64.0), output_size=64), frame)
    # A box hanging 16 px off the left edge: edge replication repeats column 0, black gives zeros.
    edge = crop_square(frame, (16.0, 32.0, 64.0), output_size=64, padding="edge")
    black = crop_square(frame, (16.0, 32.0, 64.0), output_size=64, padding="black")
    np.testing.assert_array_equal(edge[:, 16:], frame[:, :48])
    np.testing.assert_array_equal(edge[:, :16], np.repeat(frame[:, :1], 16, axis=1))
    assert black[:, :16].max() == 0 and np.array_equal(black[:, 16:], frame[:, :48])
    # A box far larger than the frame stays cheap (pre-shrunk) and keeps a flat frame flat.
    flat = np.full((48, 64, 3), 90, dtype=np.uint8)
    huge = crop_square(flat, (32.0, 24.0, 5000.0), output_size=32)
    assert huge.shape == (32, 32, 3) and huge.dtype == np.uint8 and np.all(huge == 90)
    # A box wholly outside the frame has nothing to replicate: black.
    assert crop_square(flat, (900.0, 900.0, 50.0), output_size=16).max() == 0
    with pytest.raises(ValueError, match="positive side"):
        crop_square(frame, (10.0, 10.0, 0.0), output_size=16)


def test_crop_square_samples_the_box_and_replicates_edges() -> None:
    frame = np.zeros((40, 60, 3), dtype=np.uint8)
    frame[:, 30:] = 200  # right half bright
    crop = crop_square(frame, (30.0, 20.0, 20.0), output_size=10)  # box x 20..40: half dark, half bright
    assert crop.shape == (10, 10, 3) and crop[:, :4].max() == 0 and crop[:, 6:].min() == 200
    outside = crop_square(frame, (70.0, 20.0, 20.0), output_size=10)  # mostly right of the frame: edge replicated
    assert outside.min() == 200
