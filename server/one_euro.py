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


# Steps of the filter clock below this are treated as this: 1/dt must stay finite (a step of 5e-324 s
# made alpha 0 and the speed infinite, and the filter NaN for good).
MIN_STEP_S = 1e-4


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
        if not dt > 0:  # a repeated, out-of-order or non-finite timestamp: nothing new to filter
            return self._value.copy()
        dt = max(dt, MIN_STEP_S)
        speed = (sample - self._value) / dt
        new_speed = self._speed + _alpha(self.config.derivative_cutoff_hz, dt) * (speed - self._speed)
        cutoff = self.config.min_cutoff_hz + self.config.beta * np.abs(new_speed)
        new_value = self._value + _alpha(cutoff, dt) * (sample - self._value)
        if not (np.isfinite(new_value).all() and np.isfinite(new_speed).all()):
            # Overflow from extreme inputs: start again from this sample rather than carry NaN forward.
            self._value, self._speed, self._time = sample.copy(), np.zeros_like(sample), timestamp_s
            return sample.copy()
        self._value, self._speed, self._time = new_value, new_speed, timestamp_s
        return self._value.copy()


class SignalClock:
    """A strictly increasing clock for a session's filters, from client stamps that may repeat, run
    backwards, jump or be absurd.

    Each step is the client's own step when it lies in [min_step_s, max_step_s] (capture time is what
    the filters should see), else the arrival-time step clamped to that range. So no stamp a client
    sends can stall the filters or make a step too small or large for them."""

    def __init__(self, *, min_step_s: float = 1e-3, max_step_s: float = 1.0) -> None:
        self.min_step_s = min_step_s
        self.max_step_s = max_step_s
        self._now = 0.0
        self._last_client: float | None = None
        self._last_arrival: float | None = None

    def __call__(self, client_s: float | None, arrival_s: float) -> float:
        """The filter time of a frame stamped ``client_s`` (None: no stamp) that arrived at ``arrival_s``."""
        client = client_s if client_s is not None and math.isfinite(client_s) else None
        if self._last_arrival is not None:
            step = None
            if client is not None and self._last_client is not None:
                client_step = client - self._last_client
                if self.min_step_s <= client_step <= self.max_step_s:
                    step = client_step
            if step is None:
                step = min(max(arrival_s - self._last_arrival, self.min_step_s), self.max_step_s)
            self._now += step
        self._last_client, self._last_arrival = client, arrival_s
        return self._now
