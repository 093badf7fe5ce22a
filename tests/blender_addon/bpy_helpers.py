"""Helpers the headless Blender tests share: reading an Image's pixels and driving the live timer."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from blender_addon.package import build_addon

ADDON_MODULE = "bl_ext.user_default.megalive"  # where Blender installs the extension zip


def image_as_texture(image: Any) -> np.ndarray:
    """A bpy Image's float pixels as H×W×4, top row first (as the server's textures are)."""
    width, height = image.size
    flat = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(height, width, 4)[::-1]  # Blender rows are bottom-up


def tick_until(addon: ModuleType, condition: Callable[[], bool], *, timeout_s: float = 20.0) -> None:
    """Call the timer function like Blender would (timers do not fire headless), until condition()."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met; status: {addon.state.status_line()}"
        assert addon.timer.live_tick() == addon.timer.TICK_INTERVAL_S
        time.sleep(0.005)


def install_addon(out_dir: Path, offline_wheels: Path) -> ModuleType:
    """Build the extension zip, install and enable it in the headless Blender; returns its package
    (its modules are attributes: ``addon.state``, ``addon.timer``, ``addon.bake``, ...)."""
    import bpy

    zip_path = build_addon(out_dir=out_dir, offline_wheels_dir=offline_wheels)
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"} and ADDON_MODULE in bpy.context.preferences.addons
    return sys.modules[ADDON_MODULE]
