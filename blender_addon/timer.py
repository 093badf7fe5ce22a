"""The live loop: the ``bpy.app.timers`` callback that ticks the shared controller and writes the
newest texture into the output image, starting the timer, and ``shutdown`` (timer off, session,
socket and driver source closed).
"""

from __future__ import annotations

import time

import bpy

from . import pixels
from .material import output_image
from .sources import close_source
from .state import runtime
from .wire import client as client_module
from .wire import protocol

TICK_INTERVAL_S = 1.0 / 120.0  # the timer runs this often while connected; each tick is bounded work


def write_texture(texture: client_module.Texture) -> None:
    """Write the newest texture into the output image: one foreach_set + update, no allocation."""
    buffer = texture.buffer
    if not isinstance(buffer, protocol.RawBuffer):
        return  # the live session asks for rgba8; anything else is not ours to show
    rgba = buffer.array()  # H×W×4 uint8, top row first
    height, width = rgba.shape[:2]
    image = output_image(runtime.image_name, width, height)
    runtime.pixel_buffer = pixels.texture_to_blender_pixels(rgba, out=runtime.pixel_buffer)
    image.pixels.foreach_set(runtime.pixel_buffer)
    image.update()


def live_tick() -> float | None:
    """The bpy.app.timers callback: bounded, non-blocking work; None unregisters it."""
    controller = runtime.controller
    if controller is None:
        return None
    began = time.perf_counter()
    phase = controller.phase
    texture = controller.tick(runtime.source)
    if texture is not None:
        write_texture(texture)
        runtime.write_seconds.append(time.perf_counter() - began)
    if texture is not None or controller.phase != phase:
        _redraw_sidebar()
    return TICK_INTERVAL_S


def _redraw_sidebar() -> None:
    window_manager = bpy.context.window_manager
    if window_manager is None:
        return
    for window in window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(live_tick):
        bpy.app.timers.register(live_tick, first_interval=0.0)


def shutdown(message: str = "") -> None:
    """Stop the live loop: timer off, session and socket closed. Safe to call any time."""
    if bpy.app.timers.is_registered(live_tick):
        bpy.app.timers.unregister(live_tick)
    controller, runtime.controller = runtime.controller, None
    if controller is not None:
        controller.close()
    close_source(runtime.source)
    runtime.source = None
    runtime.pixel_buffer = None
    runtime.message = message
