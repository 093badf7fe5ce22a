"""Live Link Face test helpers shared by test_packet.py, test_receiver.py and test_take.py.

An independent packet builder (the v6 layout written out with struct.pack, no module code), float
comparisons that treat NaN as equal, and a bounded poll loop for the UDP receiver.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Sequence

from unreal_bridge.livelink.packet import FaceFrame
from unreal_bridge.livelink.receiver import LiveLinkFaceReceiver

LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# An independent packet builder: the v6 layout written out with struct.pack, no module code.
# ---------------------------------------------------------------------------------------------


def build_packet(
    *,
    device_id: bytes = b"",
    subject: bytes = b"",
    frame: int = 0,
    sub_frame: float = 0.0,
    rate: tuple[int, int] = (60, 1),
    values: Sequence[float] = (0.0,) * 61,
    version: int = 6,
    count: int | None = None,
    device_id_length: int | None = None,
    subject_length: int | None = None,
    trailing: bytes = b"",
) -> bytes:
    return (
        struct.pack(">B", version)
        + struct.pack(">i", len(device_id) if device_id_length is None else device_id_length)
        + device_id
        + struct.pack(">i", len(subject) if subject_length is None else subject_length)
        + subject
        + struct.pack(">i", frame)
        + struct.pack(">f", sub_frame)
        + struct.pack(">i", rate[0])
        + struct.pack(">i", rate[1])
        + struct.pack(">B", len(values) if count is None else count)
        + b"".join(struct.pack(">f", value) for value in values)
        + trailing
    )


def f32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


def same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def same_frame(a: FaceFrame, b: FaceFrame) -> bool:
    """Field-wise equality where NaN equals NaN (dataclass == would say NaN != NaN)."""
    return (
        a.device_id == b.device_id
        and a.subject == b.subject
        and a.time.frame == b.time.frame
        and same_float(a.time.sub_frame, b.time.sub_frame)
        and a.time.rate_numerator == b.time.rate_numerator
        and a.time.rate_denominator == b.time.rate_denominator
        and len(a.values) == len(b.values)
        and all(same_float(x, y) for x, y in zip(a.values, b.values))
    )


def distinct_values(seed: float = 0.0) -> tuple[float, ...]:
    """61 different f32-exact values, so a misplaced curve shows up."""
    return tuple(f32(seed + index / 64.0 - 0.25) for index in range(61))


def make_packet(subject: str, frame: int, *, device_id: str = "phone") -> bytes:
    return build_packet(
        device_id=device_id.encode(),
        subject=subject.encode(),
        frame=frame,
        values=distinct_values(),
    )


def poll_until(receiver: LiveLinkFaceReceiver, done: Callable[[], bool], *, timeout_s: float = 5.0) -> list[int]:
    """Poll until done() holds; bounded by a deadline so a lost datagram fails, not hangs.

    Returns what each poll() call reported.
    """
    deadline = time.monotonic() + timeout_s
    per_poll: list[int] = []
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; stats: {receiver.stats()}")
        per_poll.append(receiver.poll())
        if per_poll[-1] == 0:
            time.sleep(0.001)
    return per_poll
