"""What the server holds per session and the counters it reports (`stats`): sessions, frame jobs, counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from client.protocol import Buffer
from server import capture, drivers
from server.one_euro import SignalClock


@dataclass
class SessionCounters:
    received: int = 0
    rendered: int = 0
    dropped: int = 0
    errors: int = 0  # requests refused (main thread)
    bad_frames: int = 0  # frames the worker could not decode (worker thread; kept apart so no lock is needed)


COUNTER_NAMES = ("received", "rendered", "dropped", "errors")


@dataclass
class Session:
    session_id: int
    token: str  # returned by `open`; `frame` and `close` must carry it
    peer: bytes  # ROUTER identity of the client that opened it
    avatar: int
    driver: str
    size: tuple[int, int]
    output_format: str
    crop: str
    opened_at: float
    last_seen: float
    counters: SessionCounters = field(default_factory=SessionCounters)
    clock: SignalClock = field(default_factory=SignalClock)  # main thread: the filters' time
    # Landmark-driven models (server/engine.py): the driver's landmarks become the avatar's neutral face plus the driver's
    # displacement from its own neutral, which is the session's first frame (contract/landmark_image.py retarget_landmarks).
    retarget: bool = False
    # Worker-thread state (only the worker touches these after `open`):
    stabiliser: drivers.SignalStabiliser | None = None  # arkit / landmarks sessions; image sessions of a landmark-driven model
    crop_config: capture.CropConfig | None = None  # image sessions with crop "auto"; the worker makes the cropper
    return_landmarks: bool = False  # crop "auto": send the 68 landmarks found with each texture
    driver_neutral: np.ndarray | None = None  # retarget: the first frame's 68×2 landmarks (set by the worker)

    def as_dict(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "avatar": self.avatar,
            "driver": self.driver,
            "size": list(self.size),
            "format": self.output_format,
            "retarget": self.retarget,
            **self.counter_values(),
        }

    def counter_values(self) -> dict[str, int]:
        return {
            "received": self.counters.received,
            "rendered": self.counters.rendered,
            "dropped": self.counters.dropped,
            "errors": self.counters.errors + self.counters.bad_frames,
        }


@dataclass(frozen=True)
class FrameJob:
    """One driver frame waiting for the engine."""

    session: Session
    request_id: int
    seq: int
    client_time: float | None
    signal_time_s: float  # the session's filter clock at this frame (server/one_euro.SignalClock)
    driver: Buffer
    frames: tuple[zmq.Frame, ...]  # keeps the zero-copy receive buffers alive
    received_at: float
    curve_names: Any = None  # an arkit frame's optional names list (checked by the worker)


@dataclass
class ServerCounters:
    rejected: int = 0  # requests answered with an error reply (main thread)
    internal_errors: int = 0  # requests whose handling failed unexpectedly (answered `internal`)
    bad_frames: int = 0  # frames whose pixels could not be decoded (worker thread; its own counter, no lock)
    oversized: int = 0  # messages over the part or byte limit, discarded part by part as they were read
    shed_messages: int = 0  # messages over their connection's max_messages_per_s, let go unparsed and unanswered
    unroutable: int = 0  # replies to clients that had gone
    reply_overflow: int = 0  # replies not queued for a client that does not read (textures sent as `dropped` instead)
    reaped_sessions: int = 0  # closed after session_idle_s without a message
    disconnected_sessions: int = 0  # closed because their client's connection ended
    engine_restarts: int = 0
    curve_refused: int = 0  # CURVE handshakes refused (a key not in the allow folder, or a bad handshake)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))
