"""The Blender side's own vocabulary, bpy-free (tested without Blender): what the live connection and the
bake name and choose.

The controller itself is ``client/live.py`` (shipped in the zip as ``vendor/client/live.py``, reached
through ``wire.live``): the bpy layer (``timer.py``) drives it from a bpy timer, supplies driver frames
through a ``DriverSource`` keyed by scene frame, and writes the texture ``tick()`` returns into an
Image. This module holds what only Blender needs: the panel's labels, the bake's file names, which
wire driver kind a panel driver opens, and whether it asks the server to stabilise.
"""

from __future__ import annotations

from .wire import live

CLIENT_NAME = "megalive-blender"

# The panel's driver sources -> the session's driver kind on the wire (protocol.DRIVER_KINDS).
DRIVER_WIRE_KINDS = {"IMAGE_SEQUENCE": "image", "MOVIE_CLIP": "image", "CAMERA": "image", "SHAPE_KEYS": "arkit"}


def wire_driver_kind(driver_kind: str) -> str:
    """The `open` request's driver for a panel driver source ("SHAPE_KEYS" -> "arkit", the rest "image")."""
    return DRIVER_WIRE_KINDS.get(driver_kind, "image")


def session_stabilise(wire_kind: str, stabilise: bool) -> bool | None:
    """The `open` request's ``stabilise``: capture sessions (arkit) with the box unticked switch the
    server's One-Euro filters off (False); otherwise None, the server's defaults."""
    return False if wire_kind != "image" and not stabilise else None


def session_crop(driver_kind: str, auto_crop: dict[str, bool]) -> str:
    """The `open` request's ``crop`` for a panel driver source: "auto" where its Auto Crop box is ticked (``auto_crop``:
    panel driver -> the box), else "none"; curves (SHAPE_KEYS) are never cropped."""
    return "auto" if wire_driver_kind(driver_kind) == "image" and auto_crop.get(driver_kind, False) else "none"


# The server's per-frame error when crop "auto" has found no face yet (server/worker.py). A bake keeps going past such
# frames (a take that starts without the performer in view); any other frame error stops it.
NO_FACE_ERROR = "no face found"


def is_no_face_error(message: str) -> bool:
    return NO_FACE_ERROR in message


# The controller's phases as the panel shows them.
PHASE_LABELS = {
    "disconnected": "Disconnected",
    "connected": "Connected",
    "live": "Live",
    "gone": "Server gone",
    "reconnecting": "Reconnecting…",
    "refused": "Refused",
}


def status_line(controller: live.LiveController) -> str:
    """One line for the panel: the phase's label, then why."""
    label = PHASE_LABELS[controller.phase]
    return f"{label}: {controller.detail}" if controller.detail else label


def frame_size_at(width: float, height: float, *, long_side: int) -> tuple[int, int]:
    """(width, height) in whole pixels of a frame of this aspect whose long side is ``long_side``: a render sent whole
    keeps its aspect (at least 1 px each way)."""
    if not (width > 0 and height > 0):
        raise ValueError(f"a frame needs a positive width and height, got {width}×{height}")
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def sequence_index(frame: int, *, frame_start: int) -> int:
    """Which file of an image sequence drives scene frame ``frame``: the first at frame_start, looped by the reader."""
    return frame - frame_start


class BakeError(RuntimeError):
    """The bake cannot start or go on (no folder to write to, no server, refused)."""


def bake_frame_name(prefix: str, frame: int) -> str:
    """File name of one baked frame; Blender finds the frame number in its trailing digits."""
    return f"{prefix}_{frame:06d}.png"
