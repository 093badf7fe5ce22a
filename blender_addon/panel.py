"""The N-panel (View3D ▸ N ▸ MegaLive): connection status, avatar picker with thumbnails, driver
source settings, output image and target, the live toggle and the bake.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import bpy

from . import movie, shape_keys
from .bake import MEGALIVE_OT_bake, MEGALIVE_OT_bake_cancel
from .operators import (
    MEGALIVE_OT_connect,
    MEGALIVE_OT_create_plane,
    MEGALIVE_OT_disconnect,
    MEGALIVE_OT_enroll,
    MEGALIVE_OT_enroll_cancel,
    MEGALIVE_OT_live,
    MEGALIVE_OT_pick_avatar,
)
from .properties import consent_statement
from .state import runtime, status_line

if TYPE_CHECKING:
    from .properties import MEGALIVE_SceneSettings


class MEGALIVE_PT_panel(bpy.types.Panel):
    bl_label = "MegaLive"
    bl_idname = "MEGALIVE_PT_panel"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MegaLive"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.megalive
        controller = runtime.controller
        row = layout.row()
        if controller is None:
            row.operator(MEGALIVE_OT_connect.bl_idname, icon="LINKED")
        else:
            row.operator(MEGALIVE_OT_disconnect.bl_idname, icon="UNLINKED")
        layout.label(text=status_line())
        if controller is not None and runtime.message:  # e.g. why Live or Bake could not start
            layout.label(text=runtime.message, icon="INFO")

        if controller is not None and controller.avatars:
            box = layout.box()
            box.label(text="Avatar")
            grid = box.grid_flow(columns=3, even_columns=True)
            for avatar in controller.avatars:
                icon = runtime.thumbnail_icons.get(avatar.id, 0)
                op = grid.operator(
                    MEGALIVE_OT_pick_avatar.bl_idname, text=avatar.name, icon_value=icon, depress=avatar.id == settings.avatar_id
                )
                op.avatar_id = avatar.id

        box = layout.box()
        box.prop(settings, "driver_kind")
        if settings.driver_kind == "IMAGE_SEQUENCE":
            box.prop(settings, "sequence_path")
            box.prop(settings, "auto_crop_sequence")
        elif settings.driver_kind == "MOVIE_CLIP":
            box.prop(settings, "movie_clip")
            if settings.movie_clip is None:
                box.prop(settings, "movie_path")
            box.prop(settings, "auto_crop_movie")
            if not movie.imageio_ffmpeg_available():
                box.label(text="Needs imageio-ffmpeg (ships in the extension zip; or pip install it", icon="ERROR")
                box.label(text="into Blender's Python)")
        elif settings.driver_kind == "SHAPE_KEYS":
            _draw_shape_key_settings(box, settings)
        else:
            box.prop(settings, "camera_driver_size")
            box.prop(settings, "auto_crop_camera")

        box = layout.box()
        box.prop(settings, "image_name")
        row = box.row(align=True)
        row.prop(settings, "output_width")
        row.prop(settings, "output_height")
        row = box.row(align=True)
        row.prop(settings, "target_object")
        row.operator(MEGALIVE_OT_create_plane.bl_idname, text="", icon="MESH_PLANE")

        live = controller is not None and controller.is_live
        layout.operator(MEGALIVE_OT_live.bl_idname, text="Stop Live" if live else "Go Live", icon="PLAY", depress=live)
        if controller is not None and live:
            layout.label(text=controller.figures.summary())

        _draw_enroll(layout.box(), settings)

        box = layout.box()
        box.prop(settings, "bake_dir")
        row = box.row(align=True)
        row.operator(MEGALIVE_OT_bake.bl_idname, icon="RENDER_ANIMATION")
        row.operator(MEGALIVE_OT_bake_cancel.bl_idname, text="", icon="CANCEL")


def _draw_enroll(box: bpy.types.UILayout, settings: MEGALIVE_SceneSettings) -> None:
    """Your own face: a name, the consent statement with its box, and Enroll… (a file browser for portraits)."""
    box.label(text="New avatar from portraits")
    box.prop(settings, "enroll_name")
    box.prop(settings, "enroll_consent", text="This is true:")
    for line in textwrap.wrap(consent_statement(settings.enroll_name), width=48):
        box.label(text=line)
    row = box.row()
    row.enabled = settings.enroll_consent and bool(settings.enroll_name.strip())
    row.operator(MEGALIVE_OT_enroll.bl_idname, icon="USER")
    job = runtime.enrolling
    if job is not None:
        box.label(text=job.describe(), icon="CHECKMARK" if job.state == "enrolled" else "TIME" if not job.done else "ERROR")
        if job.state == "refining":
            box.operator(MEGALIVE_OT_enroll_cancel.bl_idname, icon="CANCEL")


def _draw_shape_key_settings(box: bpy.types.UILayout, settings: MEGALIVE_SceneSettings) -> None:
    box.prop(settings, "shape_key_object")
    box.prop(settings, "shape_key_prefix")
    mesh = settings.shape_key_object
    if mesh is not None and mesh.type == "MESH" and mesh.data.shape_keys is not None:
        names = tuple(block.name for block in mesh.data.shape_keys.key_blocks[1:])  # not the Basis
        matched = len(shape_keys.match_names(names, prefix=settings.shape_key_prefix))
        box.label(text=f"{matched} of {shape_keys.NUM_BLENDSHAPES} ARKit shapes matched", icon="CHECKMARK" if matched else "ERROR")
    box.prop(settings, "head_object")
    head = settings.head_object
    if head is not None and head.type == "ARMATURE":
        box.prop_search(settings, "head_bone", head.data, "bones")
    box.prop(settings, "stabilise")
