"""Runtime state of the extension (not saved in the .blend): the live controller, its driver source,
the output image's name and pixel buffer, the panel's last message, the avatar thumbnails, and the
bake's cancel flag. Everything here is touched on Blender's main thread only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from . import pixels
from .vocabulary import status_line as controller_status_line
from .wire import client as client_module
from .wire import live as shared_live  # the controller both hosts ship (client/live.py)


@dataclass
class Runtime:
    controller: shared_live.LiveController | None = None
    source: shared_live.DriverSource | None = None
    image_name: str = ""
    pixel_buffer: np.ndarray | None = None  # reused H*W*4 float32 for Image.pixels.foreach_set
    message: str = ""  # last message for the panel when there is no controller to ask
    previews: object | None = None  # bpy.utils.previews collection of avatar thumbnails
    thumbnail_icons: dict[int, int] = field(default_factory=dict)  # avatar id -> icon id
    write_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=240))  # tick cost when a texture was written
    bake_cancel: bool = False
    enrolling: object | None = None  # the last Enroll's EnrollmentJob (client/enrollment.py): running, or its outcome
    enroll_listed: object | None = None  # the EnrollmentJob whose new avatar the panel has already listed


runtime = Runtime()


def status_line() -> str:
    controller = runtime.controller
    if controller is None:
        return runtime.message or "Disconnected"
    return controller_status_line(controller)


def load_thumbnails(avatars: list[client_module.AvatarEntry]) -> None:
    """The avatars' thumbnails as preview icons for the panel (replaces the previous ones)."""
    import bpy.utils.previews

    if runtime.previews is not None:
        bpy.utils.previews.remove(runtime.previews)
    runtime.previews = bpy.utils.previews.new()
    runtime.thumbnail_icons.clear()
    for avatar in avatars:
        if avatar.thumbnail is None:
            continue  # no thumbnail: the panel shows the name only
        rgb = avatar.thumbnail.array()
        preview = runtime.previews.new(f"avatar-{avatar.id}")
        preview.image_size = (rgb.shape[1], rgb.shape[0])
        preview.image_pixels_float.foreach_set(pixels.texture_to_blender_pixels(np.ascontiguousarray(rgb)))
        runtime.thumbnail_icons[avatar.id] = preview.icon_id


def free_thumbnails() -> None:
    """Release the thumbnail previews (unregister)."""
    import bpy.utils.previews

    if runtime.previews is not None:
        bpy.utils.previews.remove(runtime.previews)
        runtime.previews = None
        runtime.thumbnail_icons.clear()
