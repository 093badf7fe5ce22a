"""Helpers the headless Blender tests share: reading an Image's pixels and driving the live timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np


def image_as_texture(image: Any) -> np.ndarray:
    """A bpy Image's float pixels as H×W×4, top row first (as the server's textures are)."""
    width, height = image.size
    flat = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(height, width, 4)[::-1]  # Blender rows are bottom-up


def tick_until(ui: ModuleType, condition: Callable[[], bool], *, timeout_s: float = 20.0) -> None:
    """Call the timer function like Blender would (timers do not fire headless), until condition()."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met; status: {ui.status_line()}"
        assert ui.live_tick() == ui.TICK_INTERVAL_S
        time.sleep(0.005)
