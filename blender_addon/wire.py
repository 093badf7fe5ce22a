"""Where the extension gets the MegaLive client and contract from: the vendored copies, else the repository's.

`megalive addon build` copies the ``client/`` and ``contract/`` packages into ``vendor/client/`` and
``vendor/contract/`` of the extension (one source of truth stays in the repository; client/vendor.py lists the
files). Inside Blender only those copies exist; in this repository ``blender_addon/`` has no ``vendor`` and the
top-level ``client`` and ``contract`` packages are importable. Host code imports them only through this module.
"""

from __future__ import annotations

try:
    from .vendor.client import client, enrollment, live, protocol  # installed extension: bl_ext.<repo>.megalive.vendor.client
    from .vendor.contract import arkit
except ImportError:  # in-repo: blender_addon/ has no vendor folder
    from client import client, enrollment, live, protocol  # type: ignore[no-redef]
    from contract import arkit  # type: ignore[no-redef]

__all__ = ["arkit", "client", "enrollment", "live", "protocol"]
