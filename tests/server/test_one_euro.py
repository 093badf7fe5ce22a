"""One-Euro filter: constant stays constant, a step converges, noise is cut, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

from server.one_euro import OneEuroConfig, OneEuroFilter

RATE_HZ = 60.0


def run(filter_: OneEuroFilter, samples: np.ndarray) -> np.ndarray:
    return np.stack([filter_(sample, index / RATE_HZ) for index, sample in enumerate(samples)])


def test_constant_input_stays_constant() -> None:
    samples = np.full((100, 3), [0.2, -1.0, 5.0])
    np.testing.assert_allclose(run(OneEuroFilter(), samples), samples, atol=1e-12)


def test_a_step_converges_and_faster_beta_lags_less() -> None:
    samples = np.concatenate([np.zeros(30), np.ones(90)])[:, None]
    slow = run(OneEuroFilter(config=OneEuroConfig(min_cutoff_hz=1.0, beta=0.0)), samples)[:, 0]
    fast = run(OneEuroFilter(config=OneEuroConfig(min_cutoff_hz=1.0, beta=1.0)), samples)[:, 0]
    assert abs(slow[-1] - 1) < 0.01 and abs(fast[-1] - 1) < 0.01  # both reach the new value
    assert np.all(np.diff(slow) >= -1e-12)  # no overshoot backwards
    assert fast[35] > slow[35] + 0.1  # a speed-adaptive cutoff follows the step sooner


def test_noise_on_a_still_signal_is_cut() -> None:
    noise = np.random.default_rng(0).normal(0, 0.01, (600, 4))
    filtered = run(OneEuroFilter(config=OneEuroConfig(min_cutoff_hz=1.0, beta=0.05)), noise)
    jitter_in = np.abs(np.diff(noise, axis=0)).mean()
    jitter_out = np.abs(np.diff(filtered, axis=0)).mean()
    assert jitter_out < jitter_in / 3


def test_bad_input_is_refused_and_the_filter_stays_usable() -> None:
    filter_ = OneEuroFilter()
    filter_(np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        filter_(np.array([np.nan, 0.0]), 0.1)
    with pytest.raises(ValueError, match="shape"):
        filter_(np.zeros(3), 0.2)
    np.testing.assert_allclose(filter_(np.zeros(2), 0.3), [0, 0])
    assert np.allclose(filter_(np.ones(2), 0.3), [0, 0])  # same timestamp: nothing new
    with pytest.raises(ValueError):
        OneEuroConfig(min_cutoff_hz=0)
