"""Where the extension gets the MegaLive client from: the vendored copy, else the repository's.

`megalive addon build` copies ``server/protocol.py``, ``server/client.py`` and ``server/live.py``
into ``vendor/`` of the extension (one source of truth stays in ``server/``). Inside Blender only
that copy exists; in this repository ``blender_addon/`` has no ``vendor`` and ``server`` is importable.
"""

from __future__ import annotations

try:
    from .vendor import client, live, protocol  # installed extension: bl_ext.<repo>.megalive.vendor
except ImportError:  # in-repo: blender_addon/ has no vendor folder
    from server import client, live, protocol  # type: ignore[no-redef]

__all__ = ["client", "live", "protocol"]
