"""Live Link Face (iPhone ARKit over UDP, packet v6): three modules, one role each.

Standard library and ``contract.arkit`` only: the relay runs them in a terminal and the editor's
``arkit`` driver inside Unreal's embedded Python, so nothing here imports Unreal, numpy, torch or pyzmq
(DESIGN §8).

- ``packet.py``: the packet v6 codec: ``parse_packet`` / ``encode_packet``, ``FaceFrame`` and
  ``FrameTime``, ``PacketError`` and its reasons, the curve names, the packet layout (documented there).
- ``receiver.py``: ``LiveLinkFaceReceiver``, the non-blocking UDP receiver that keeps the newest frame
  per subject; ``PortInUseError``; ``DEFAULT_PORT`` and ``DEFAULT_BIND_ADDRESS`` (loopback).
- ``take.py``: take files: ``TakeWriter`` (``NAME.partial`` until finished, capped at
  ``DEFAULT_TAKE_MAX_BYTES``), ``read_take``, ``replay_take``, the take file format (documented there).

This package re-exports nothing: import a name from the module that defines it.
"""
