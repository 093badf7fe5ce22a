"""Where the bridge gets the MegaLive client from: the vendored copy, else the repository's.

``megalive unreal package`` copies ``server/protocol.py``, ``server/client.py`` and ``server/live.py``
into ``megalive_bridge/vendor/`` (one source of truth stays in ``server/``). Inside Unreal only that
copy exists; in this repository the package has no ``vendor`` and ``server`` is importable.
"""

from __future__ import annotations

try:
    from .vendor import client, live, protocol  # packaged: megalive_bridge/vendor/
except ImportError:  # in-repo: unreal_bridge/ has no vendor folder
    from server import client, live, protocol

CLIENT_ORIGIN: str = "vendored" if client.__name__.endswith(".vendor.client") else "repository"

__all__ = ["CLIENT_ORIGIN", "client", "live", "protocol"]
