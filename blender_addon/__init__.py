"""MegaLive for Blender: live neural head avatar textures from a local MegaLive server (DESIGN §7).

Blender 4.2+ extension (see blender_manifest.toml; no ``bl_info``). The bpy layer, by role:
``state.py`` (runtime state), ``properties.py`` (preferences and scene settings), ``sources.py``
(driver sources), ``material.py`` (output image and material), ``timer.py`` (the live loop),
``operators.py``, ``bake.py``, ``panel.py``, and ``registration.py`` (the ordered class list).
``vocabulary.py``, ``pixels.py``, ``movie.py`` (the movie clip decoder) and ``shape_keys.py`` (the ARKit
shape-key driver's names and head angles) are bpy-free so they can be tested without Blender.
Everything in the bpy layer runs on Blender's main thread; the only other threads (the controller's
reconnect worker, the movie decoder) never touch bpy data.
"""

from __future__ import annotations


def register() -> None:
    from . import registration

    registration.register()


def unregister() -> None:
    from . import registration

    registration.unregister()
