"""One-Euro filter (Casiez, Roussel & Vogel, CHI 2012) for driving signals: head pose, expression
curves, crop boxes. Low jitter when the performer holds still, little lag when they move fast: the
cutoff frequency rises with the signal's speed.

    cutoff = min_cutoff + beta · |filtered speed|
    alpha(cutoff) = 1 / (1 + tau / dt),  tau = 1 / (2π · cutoff)

Vectorised over the channels of one signal (numpy). Each channel group (pose, expression, box) gets
its own filter so each can have its own cutoff and beta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneEuroConfig:
    min_cutoff_hz: float = 1.0  # the cutoff when still: lower means less jitter, more lag at rest
    beta: float = 0.05  # how fast the cutoff rises with speed: higher means less lag when moving
    derivative_cutoff_hz: float = 1.0  # smoothing of the speed estimate itself

    def __post_init__(self) -> None:
        if not (self.min_cutoff_hz > 0 and self.derivative_cutoff_hz > 0 and self.beta >= 0):
            raise ValueError("One-Euro cutoffs must be > 0 and beta ≥ 0")


def _alpha(cutoff_hz: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filters successive samples of one fixed-size signal; ``reset()`` forgets the history."""

    def __init__(self, *, config: OneEuroConfig = OneEuroConfig()) -> None:
        self.config = config
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time: float | None = None

    @property
    def last(self) -> np.ndarray | None:
        """The last filtered value (None before the first sample)."""
        return None if self._value is None else self._value.copy()

    def reset(self) -> None:
        self._value = self._speed = self._time = None

    def __call__(self, sample: np.ndarray, timestamp_s: float) -> np.ndarray:
        """The filtered value of ``sample`` (any shape, fixed across calls) taken at ``timestamp_s``."""
        sample = np.asarray(sample, dtype=np.float64)
        if not np.isfinite(sample).all():
            raise ValueError("One-Euro filter input holds NaN or infinite values")
        if self._value is None or self._time is None:
            self._value, self._speed, self._time = sample.copy(), np.zeros_like(sample), timestamp_s
            return sample.copy()
        if sample.shape != self._value.shape:
            raise ValueError(f"sample shape {sample.shape} differs from the filter's {self._value.shape}")
        dt = timestamp_s - self._time
        if dt <= 0:  # a repeated or out-of-order timestamp: nothing new to filter
            return self._value.copy()
        speed = (sample - self._value) / dt
        self._speed = self._speed + _alpha(self.config.derivative_cutoff_hz, dt) * (speed - self._speed)
        cutoff = self.config.min_cutoff_hz + self.config.beta * np.abs(self._speed)
        self._value = self._value + _alpha(cutoff, dt) * (sample - self._value)
        self._time = timestamp_s
        return self._value.copy()
