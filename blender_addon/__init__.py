"""MegaLive for Blender: live neural head avatar textures from a local MegaLive server (DESIGN §7).

Blender 4.2+ extension (see blender_manifest.toml; no ``bl_info``). The bpy layer lives in
``ui.py``; ``live.py``, ``pixels.py``, ``movie.py`` (the movie clip decoder) and ``shape_keys.py`` (the
ARKit shape-key driver's names and head angles) are bpy-free so they can be tested without Blender.
"""

from __future__ import annotations


def register() -> None:
    from . import ui

    ui.register()


def unregister() -> None:
    from . import ui

    ui.unregister()
