"""MegaLive runtime: ONNX Runtime engine, ZeroMQ service, drivers, capture and the `megalive` CLI (no torch here; the
protocol and client live in client/, the shared vocabulary in contract/)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("megalive")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
