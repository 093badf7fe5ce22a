"""Where the bridge gets the MegaLive client and contract from: the vendored copies, else the repository's.

``megalive unreal package`` copies the ``client/`` and ``contract/`` packages into
``megalive_bridge/vendor/client/`` and ``megalive_bridge/vendor/contract/`` (one source of truth stays in the
repository; client/vendor.py lists the files). Inside Unreal only those copies exist; in this repository the
package has no ``vendor`` and the top-level ``client`` and ``contract`` packages are importable.
(livelink/packet.py reaches ``contract.arkit`` the same way on its own: it must import without pyzmq.)
"""

from __future__ import annotations

try:
    from .vendor.client import client, enrollment, live, protocol  # packaged: megalive_bridge/vendor/client/
    from .vendor.contract import arkit
except ImportError:  # in-repo: unreal_bridge/ has no vendor folder
    from client import client, enrollment, live, protocol
    from contract import arkit

CLIENT_ORIGIN: str = "vendored" if client.__name__.endswith(".vendor.client.client") else "repository"

__all__ = ["CLIENT_ORIGIN", "arkit", "client", "enrollment", "live", "protocol"]
