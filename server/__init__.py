"""MegaLive runtime: wire protocol, client, ONNX Runtime engine and ZeroMQ service (no torch here)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("megalive")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
