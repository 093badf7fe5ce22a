"""Registration: the extension's classes as one ordered list, registered in order and unregistered in
reverse, the Scene pointer to its settings, and the load_pre handler that stops streaming.
"""

from __future__ import annotations

import bpy
from bpy.app.handlers import persistent

from .bake import MEGALIVE_OT_bake, MEGALIVE_OT_bake_cancel
from .operators import (
    MEGALIVE_OT_connect,
    MEGALIVE_OT_create_plane,
    MEGALIVE_OT_disconnect,
    MEGALIVE_OT_enroll,
    MEGALIVE_OT_enroll_cancel,
    MEGALIVE_OT_live,
    MEGALIVE_OT_pick_avatar,
    enroll_tick,
)
from .panel import MEGALIVE_PT_panel
from .properties import MEGALIVE_AddonPreferences, MEGALIVE_SceneSettings
from .state import free_thumbnails
from .timer import shutdown


@persistent
def on_load_pre(*_args: object) -> None:
    """A new .blend is about to load: the old scene's image and settings go away, so stop streaming."""
    shutdown()


CLASSES: tuple[type, ...] = (
    MEGALIVE_AddonPreferences,
    MEGALIVE_SceneSettings,
    MEGALIVE_OT_connect,
    MEGALIVE_OT_disconnect,
    MEGALIVE_OT_pick_avatar,
    MEGALIVE_OT_live,
    MEGALIVE_OT_create_plane,
    MEGALIVE_OT_enroll,
    MEGALIVE_OT_enroll_cancel,
    MEGALIVE_OT_bake,
    MEGALIVE_OT_bake_cancel,
    MEGALIVE_PT_panel,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.megalive = bpy.props.PointerProperty(type=MEGALIVE_SceneSettings)
    if on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(on_load_pre)


def unregister() -> None:
    shutdown()
    if bpy.app.timers.is_registered(enroll_tick):
        bpy.app.timers.unregister(enroll_tick)
    if on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(on_load_pre)
    free_thumbnails()
    del bpy.types.Scene.megalive
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
