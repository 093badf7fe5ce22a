"""Live Link Face v6: parser, encoder, UDP receiver, take files (unreal_bridge/livelink_face.py)."""

from __future__ import annotations

import math
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unreal_bridge.livelink_face import (
    ARKIT_BLENDSHAPES,
    CURVE_NAMES,
    DEFAULT_PORT,
    MAX_STRING_BYTES,
    PACKET_VERSION,
    ROTATION_NAMES,
    TAKE_MAGIC,
    FaceFrame,
    FrameTime,
    LiveLinkFaceReceiver,
    PacketError,
    TakeWriter,
    encode_packet,
    parse_packet,
    read_take,
    replay_take,
)

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


# ---------------------------------------------------------------------------------------------
# Constants and frames
# ---------------------------------------------------------------------------------------------


def test_curve_names_follow_live_link_face_order() -> None:
    assert len(ARKIT_BLENDSHAPES) == 52 and len(set(ARKIT_BLENDSHAPES)) == 52
    assert len(ROTATION_NAMES) == 9 and len(CURVE_NAMES) == 61 and len(set(CURVE_NAMES)) == 61
    assert CURVE_NAMES[:52] == ARKIT_BLENDSHAPES and CURVE_NAMES[52:] == ROTATION_NAMES
    assert ARKIT_BLENDSHAPES[0] == "eyeBlinkLeft"
    assert ARKIT_BLENDSHAPES[7] == "eyeBlinkRight"
    assert ARKIT_BLENDSHAPES[17] == "jawOpen"
    assert ARKIT_BLENDSHAPES[43] == "browInnerUp"
    assert ARKIT_BLENDSHAPES[51] == "tongueOut"
    assert ROTATION_NAMES == (
        "headYaw",
        "headPitch",
        "headRoll",
        "leftEyeYaw",
        "leftEyePitch",
        "leftEyeRoll",
        "rightEyeYaw",
        "rightEyePitch",
        "rightEyeRoll",
    )
    assert PACKET_VERSION == 6 and DEFAULT_PORT == 11111


def test_module_imports_with_the_standard_library_only() -> None:
    code = (
        "import sys, unreal_bridge.livelink_face\n"
        "heavy = {'numpy', 'torch', 'unreal', 'zmq', 'msgpack', 'bpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


def test_frame_time_seconds() -> None:
    assert FrameTime(120, 0.5, 60, 1).seconds == pytest.approx(120.5 / 60)
    assert FrameTime(30, 0.0, 30000, 1001).seconds == pytest.approx(30 * 1001 / 30000)
    assert FrameTime(30, 0.0, 30000, 1001).rate == pytest.approx(29.97002997)
    # No timebase: guarded, never ZeroDivisionError.
    assert FrameTime(10, 0.0, 0, 1).seconds == 0.0
    assert FrameTime(10, 0.0, 60, 0).seconds == 0.0
    assert FrameTime(10, 0.0, -60, 1).seconds == 0.0


def test_face_frame_helpers() -> None:
    values = distinct_values()
    frame = FaceFrame(device_id="d", subject="s", time=FrameTime(1, 0.0, 60, 1), values=values)
    assert frame.blendshapes == values[:52] and len(frame.blendshapes) == 52
    assert frame.rotations == values[52:] and len(frame.rotations) == 9
    assert frame.head_rotation == values[52:55]
    curves = frame.curves
    assert list(curves) == list(CURVE_NAMES)
    assert curves["jawOpen"] == values[17] and curves["rightEyeRoll"] == values[60]
    with pytest.raises(TypeError):
        curves["jawOpen"] = 1.0  # type: ignore[index]
    with pytest.raises(ValueError):
        FaceFrame(device_id="d", subject="s", time=FrameTime(1, 0.0, 60, 1), values=(0.0,) * 60)
    built = FaceFrame.from_curves(device_id="d", subject="s", time=FrameTime(1, 0.0, 60, 1), curves={"jawOpen": 0.5})
    assert built.curves["jawOpen"] == 0.5 and sum(built.values) == 0.5
    with pytest.raises(ValueError, match="unknown"):
        FaceFrame.from_curves(device_id="d", subject="s", time=FrameTime(1, 0.0, 60, 1), curves={"JawOpen": 1.0})


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("id_length", [0, 5, 36, 100])
@pytest.mark.parametrize("subject", ["iPhone", "", "Ана 🎭"])
def test_parse_reads_every_field(id_length: int, subject: str) -> None:
    device_id = "".join(chr(ord("A") + index % 26) for index in range(id_length))
    values = distinct_values(0.5)
    packet = build_packet(
        device_id=device_id.encode(),
        subject=subject.encode("utf-8"),
        frame=123456,
        sub_frame=0.25,
        rate=(30000, 1001),
        values=values,
    )
    frame = parse_packet(packet)
    assert frame.device_id == device_id and len(frame.device_id) == id_length
    assert frame.subject == subject
    assert frame.time == FrameTime(frame=123456, sub_frame=0.25, rate_numerator=30000, rate_denominator=1001)
    assert frame.values == values
    assert frame.blendshapes == values[:52] and frame.rotations == values[52:]
    # bytearray and memoryview decode the same way (the receiver passes a memoryview).
    assert parse_packet(bytearray(packet)) == frame
    assert parse_packet(memoryview(bytearray(packet) + b"xx")[: len(packet)]) == frame


def test_parse_accepts_strings_up_to_the_cap() -> None:
    packet = build_packet(device_id=b"d" * MAX_STRING_BYTES, subject=b"s" * MAX_STRING_BYTES)
    frame = parse_packet(packet)
    assert len(frame.device_id) == MAX_STRING_BYTES and len(frame.subject) == MAX_STRING_BYTES


def test_parse_keeps_non_finite_values() -> None:
    values = list(distinct_values())
    values[17], values[0], values[52] = math.nan, math.inf, -math.inf
    frame = parse_packet(build_packet(values=values, sub_frame=math.nan))
    assert math.isnan(frame.curves["jawOpen"]) and math.isnan(frame.time.sub_frame)
    assert frame.curves["eyeBlinkLeft"] == math.inf and frame.curves["headYaw"] == -math.inf


def test_every_truncation_is_short() -> None:
    packet = build_packet(device_id=b"0123456789abcdef0123456789abcdef0123", subject=b"Ana")
    parse_packet(packet)
    for length in range(len(packet)):
        with pytest.raises(PacketError) as caught:
            parse_packet(packet[:length])
        assert caught.value.reason == "short", (length, caught.value)


@pytest.mark.parametrize("version", [0, 5, 7, 255])
def test_wrong_version(version: int) -> None:
    with pytest.raises(PacketError) as caught:
        parse_packet(build_packet(version=version))
    assert caught.value.reason == "version"


@pytest.mark.parametrize(("count", "value_count"), [(60, 60), (62, 62), (0, 0), (60, 61), (255, 61)])
def test_wrong_count(count: int, value_count: int) -> None:
    with pytest.raises(PacketError) as caught:
        parse_packet(build_packet(values=(0.0,) * value_count, count=count))
    assert caught.value.reason == "count"


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * 4, b"trailing garbage"])
def test_trailing_bytes_are_rejected(extra: bytes) -> None:
    with pytest.raises(PacketError) as caught:
        parse_packet(build_packet(device_id=b"dev", trailing=extra))
    assert caught.value.reason == "trailing"


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"ok\xc3", b"\xed\xa0\x80", b"\x80"])
@pytest.mark.parametrize("field", ["device_id", "subject"])
def test_invalid_utf8(bad: bytes, field: str) -> None:
    with pytest.raises(PacketError) as caught:
        parse_packet(build_packet(**{field: bad}))
    assert caught.value.reason == "utf8"


@pytest.mark.parametrize("claimed", [-1, -(2**31), MAX_STRING_BYTES + 1, 2**31 - 1])
@pytest.mark.parametrize("field", ["device_id_length", "subject_length"])
def test_bad_string_lengths(claimed: int, field: str) -> None:
    with pytest.raises(PacketError) as caught:
        parse_packet(build_packet(device_id=b"abc", subject=b"abc", **{field: claimed}))
    assert caught.value.reason == "length"


def test_length_claim_past_the_end_is_short() -> None:
    with pytest.raises(PacketError) as caught:
        parse_packet(build_packet(device_id=b"abc", device_id_length=600))
    assert caught.value.reason == "short"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_parse_raises_only_packet_error_on_garbage(data: bytes, as_v6: bool) -> None:
    if as_v6:
        data = bytes([PACKET_VERSION]) + data
    try:
        parse_packet(data)
    except PacketError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_parse_raises_only_packet_error_on_mutations(data: st.DataObject) -> None:
    valid = build_packet(device_id=b"device-1", subject=b"subj", values=distinct_values())
    packet = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(packet) - 1))
        packet[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(packet)))
    try:
        parse_packet(bytes(packet[:cut]))
    except PacketError:
        pass


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


def test_encode_matches_the_independent_builder() -> None:
    values = distinct_values(1.0)
    frame = FaceFrame(device_id="dev", subject="Ана 🎭", time=FrameTime(7, 0.5, 60, 1), values=values)
    expected = build_packet(device_id=b"dev", subject="Ана 🎭".encode(), frame=7, sub_frame=0.5, values=values)
    assert encode_packet(frame) == expected


_names = st.text(max_size=200)  # <= 800 bytes of UTF-8, under the 1 KiB cap
_f32s = st.floats(width=32)  # includes NaN and infinities
_i32s = st.integers(-(2**31), 2**31 - 1)


@settings(max_examples=100, deadline=None)
@given(
    device_id=_names,
    subject=_names,
    frame_number=_i32s,
    sub_frame=_f32s,
    numerator=_i32s,
    denominator=_i32s,
    values=st.lists(_f32s, min_size=61, max_size=61),
)
def test_encode_parse_round_trip(
    device_id: str,
    subject: str,
    frame_number: int,
    sub_frame: float,
    numerator: int,
    denominator: int,
    values: list[float],
) -> None:
    frame = FaceFrame(
        device_id=device_id,
        subject=subject,
        time=FrameTime(frame_number, sub_frame, numerator, denominator),
        values=tuple(values),
    )
    packet = encode_packet(frame)
    assert same_frame(parse_packet(packet), frame)
    assert encode_packet(parse_packet(packet)) == packet


def test_encode_rejects_unencodable_frames() -> None:
    time_ = FrameTime(0, 0.0, 60, 1)
    with pytest.raises(ValueError):
        encode_packet(FaceFrame(device_id="x" * 1025, subject="s", time=time_, values=(0.0,) * 61))
    with pytest.raises(ValueError):
        encode_packet(FaceFrame(device_id="d", subject="s", time=FrameTime(2**31, 0.0, 60, 1), values=(0.0,) * 61))
    with pytest.raises(ValueError):
        encode_packet(FaceFrame(device_id="d", subject="s", time=time_, values=(1e39,) * 61))


# ---------------------------------------------------------------------------------------------
# Receiver (UDP loopback)
# ---------------------------------------------------------------------------------------------


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


@pytest.fixture
def sender():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield sock
    sock.close()


def test_receiver_binds_an_ephemeral_port_and_closes() -> None:
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as receiver:
        assert receiver.port > 0 and not receiver.closed and receiver.fileno() >= 0
        assert receiver.poll() == 0  # nothing queued: returns at once
        assert receiver.latest() is None and receiver.subjects() == ()
    assert receiver.closed and receiver.poll() == 0 and receiver.fileno() == -1
    receiver.close()  # idempotent


def test_receiver_binds_loopback_by_default() -> None:
    """Every interface is opt-in (a phone on the LAN): by default nobody else on the network can send curves."""
    with LiveLinkFaceReceiver(port=0) as receiver:
        assert receiver.bind_address == LOOPBACK
        with socket.socket(fileno=socket.dup(receiver.fileno())) as view:
            assert view.getsockname() == (LOOPBACK, receiver.port)


@pytest.mark.parametrize("second_address", [LOOPBACK, "0.0.0.0"])
def test_a_second_receiver_on_a_port_fails_at_once(sender: socket.socket, second_address: str) -> None:
    """No SO_REUSEADDR: two receivers used to share a port and one of them silently got nothing."""
    import errno

    from unreal_bridge.livelink_face import PortInUseError

    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as first:
        with pytest.raises(PortInUseError) as error:
            LiveLinkFaceReceiver(bind_address=second_address, port=first.port)
        assert isinstance(error.value, OSError) and error.value.errno == errno.EADDRINUSE
        assert error.value.port == first.port
        assert str(error.value).startswith(f"UDP port {first.port} is already in use")
        assert "\n" not in str(error.value)
        sender.sendto(make_packet("face", 7), (LOOPBACK, first.port))
        poll_until(first, lambda: first.latest("face") is not None)  # the first one keeps receiving
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=first.port) as again:  # free once closed
        assert again.port == first.port


def test_receiver_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_packets_per_poll=0)
    with pytest.raises(ValueError):
        LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_subjects=0)


def test_receiver_counts_garbage_by_reason_and_never_raises(sender: socket.socket) -> None:
    good = make_packet("face", 1)
    garbage = {
        "short": [b"", b"\x06", good[:100], good[:-1]],
        "version": [b"\x05" + good[1:], b"\xff"],
        "count": [build_packet(values=(0.0,) * 60)],
        "trailing": [good + b"\x00"],
        "utf8": [build_packet(subject=b"\xff")],
        "length": [build_packet(device_id_length=-5), build_packet(subject_length=10**6)],
    }
    datagrams = [packet for packets in garbage.values() for packet in packets]
    datagrams.insert(3, good)
    datagrams.append(make_packet("face", 2))
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as receiver:
        for datagram in datagrams:
            sender.sendto(datagram, (LOOPBACK, receiver.port))
        poll_until(receiver, lambda: receiver.stats().received == len(datagrams))
        stats = receiver.stats()
        assert stats.accepted == 2 and stats.malformed == len(datagrams) - 2
        assert dict(stats.malformed_by_reason) == {reason: len(packets) for reason, packets in garbage.items()}
        assert receiver.latest("face").time.frame == 2
        assert receiver.subjects() == ("face",)


def test_receiver_keeps_newest_frame_per_subject(sender: socket.socket) -> None:
    total = 1000
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as receiver:
        address = (LOOPBACK, receiver.port)
        for number in range(total):
            subject = "Left" if number % 2 == 0 else "Right"
            sender.sendto(make_packet(subject, number), address)
            if number % 50 == 49:  # keep well inside the socket buffer
                receiver.poll()
        poll_until(receiver, lambda: receiver.stats().received >= total)
        stats = receiver.stats()
        assert stats.received == total and stats.accepted == total and stats.malformed == 0
        assert receiver.subjects() == ("Left", "Right")
        assert receiver.latest("Left").time.frame == total - 2
        assert receiver.latest("Right").time.frame == total - 1
        assert receiver.latest().time.frame == total - 1
        assert receiver.latest("Nobody") is None
        receiver.forget("Right")
        assert receiver.subjects() == ("Left",) and receiver.latest() is None


def test_receiver_subject_table_is_bounded(sender: socket.socket) -> None:
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_subjects=3) as receiver:
        for index in range(5):
            sender.sendto(make_packet(f"s{index}", index), (LOOPBACK, receiver.port))
        sender.sendto(make_packet("s0", 99), (LOOPBACK, receiver.port))
        poll_until(receiver, lambda: receiver.stats().received == 6)
        assert receiver.subjects() == ("s0", "s1", "s2")
        assert receiver.stats().dropped_subjects == 2
        assert receiver.latest("s0").time.frame == 99 and receiver.latest("s4") is None


def test_poll_reads_at_most_max_packets_per_call(sender: socket.socket) -> None:
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_packets_per_poll=64) as receiver:
        for number in range(200):  # loopback queues each datagram before sendto returns
            packet = make_packet("face", number) if number % 3 else b"junk"
            sender.sendto(packet, (LOOPBACK, receiver.port))
        per_poll = [receiver.poll()]
        per_poll += poll_until(receiver, lambda: receiver.stats().received == 200)
        assert per_poll[0] == 64  # a deep queue is read 64 datagrams at a time, not drained
        assert max(per_poll) == 64 and sum(per_poll) == 200
        assert receiver.stats().received == 200 and receiver.poll() == 0
        assert receiver.latest("face").time.frame == 199


def test_receiver_flood_costs_bounded_work_per_poll(sender: socket.socket) -> None:
    cap_per_poll, cap_subjects = 64, 8
    rng = random.Random(1234)
    flood: list[bytes] = []
    for index in range(512):  # random subjects, mixed with garbage
        if index % 4 == 3:
            flood.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))))
        else:
            name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(12))
            flood.append(make_packet(name, index))

    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_packets_per_poll=cap_per_poll, max_subjects=cap_subjects) as receiver:
        address = (LOOPBACK, receiver.port)
        sender.sendto(make_packet("good", 0), address)
        poll_until(receiver, lambda: receiver.latest("good") is not None)

        sent = 0

        def blast() -> None:
            nonlocal sent
            flood_sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stop_at = time.monotonic() + 1.0
            try:
                while sent < 100_000 and (sent % 256 or time.monotonic() < stop_at):
                    flood_sender.sendto(flood[sent % len(flood)], address)
                    sent += 1
            finally:
                flood_sender.close()

        thread = threading.Thread(target=blast, daemon=True)
        thread.start()
        per_poll: list[int] = []
        while thread.is_alive() or (per_poll and per_poll[-1] > 0):
            before = receiver.stats().received
            processed = receiver.poll()
            assert receiver.stats().received - before == processed  # count, don't time
            assert processed <= cap_per_poll
            assert len(receiver.subjects()) <= cap_subjects
            per_poll.append(processed)
            time.sleep(0.005)  # the caller's other work (an editor tick): lets a backlog build
        thread.join()

        assert sent > 0 and max(per_poll) == cap_per_poll  # the bound was actually exercised
        stats = receiver.stats()
        assert stats.subjects <= cap_subjects and stats.dropped_subjects > 0
        assert stats.malformed > 0 and stats.received <= sent + 1

        sender.sendto(make_packet("good", 10**6), address)
        poll_until(receiver, lambda: receiver.latest("good").time.frame == 10**6)
        assert "good" in receiver.subjects()


def test_receiver_feeds_raw_datagrams_to_a_take_writer(tmp_path: Path, sender: socket.socket) -> None:
    clock = iter([0.0, 0.5, 1.25])  # writer start, then one reading per packet
    writer = TakeWriter(tmp_path / "take.llf", clock=lambda: next(clock))
    packets = [make_packet("face", 1), b"garbage"]
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, on_datagram=writer.write) as receiver:
        for packet in packets:
            sender.sendto(packet, (LOOPBACK, receiver.port))
        poll_until(receiver, lambda: receiver.stats().received == 2)
    writer.close()
    assert list(read_take(tmp_path / "take.llf")) == [(0.5, packets[0]), (1.25, packets[1])]


# ---------------------------------------------------------------------------------------------
# Takes
# ---------------------------------------------------------------------------------------------


def write_take(path: Path, records: list[tuple[float, bytes]]) -> Path:
    with TakeWriter(path) as writer:
        for at, packet in records:
            writer.write(packet, at)
    return path


RECORDS = [
    (0.0, make_packet("a", 1)),
    (0.1, make_packet("a", 2)),
    (0.25, b""),  # raw datagrams are recorded as received, even empty or malformed ones
    (1.0, make_packet("Ана 🎭", 3, device_id="x" * 100)),
]


def test_take_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "take.llf"
    writer = TakeWriter(path)
    assert writer.partial_path.exists() and not path.exists()  # never half-written under NAME
    for at, packet in RECORDS:
        writer.write(packet, at)
    assert writer.close() == path
    assert path.exists() and not writer.partial_path.exists()
    assert path.read_bytes().startswith(TAKE_MAGIC)
    assert list(read_take(path)) == RECORDS
    with pytest.raises(ValueError):
        writer.write(b"late", 2.0)


def test_take_writer_uses_its_clock(tmp_path: Path) -> None:
    readings = iter([100.0, 100.5, 102.0])
    with TakeWriter(tmp_path / "t.llf", clock=lambda: next(readings)) as writer:
        writer.write(b"one")
        writer.write(b"two")
    assert list(read_take(tmp_path / "t.llf")) == [(0.5, b"one"), (2.0, b"two")]


def test_take_interrupted_by_an_exception_stays_partial(tmp_path: Path) -> None:
    path = tmp_path / "take.llf"
    with pytest.raises(RuntimeError):
        with TakeWriter(path) as writer:
            writer.write(b"kept", 0.0)
            raise RuntimeError("crash")
    assert not path.exists()
    assert list(read_take(writer.partial_path)) == [(0.0, b"kept")]


def test_take_writer_stops_at_its_size_cap(tmp_path: Path) -> None:
    """A flood cannot fill the disk: past max_bytes nothing is written, later packets are refused
    (even ones that would still fit, so the take has no gaps) and counted."""
    path = tmp_path / "take.llf"
    packet = make_packet("face", 1)
    record_size = 12 + len(packet)
    cap = len(TAKE_MAGIC) + 3 * record_size + 11
    writer = TakeWriter(path, max_bytes=cap)
    assert writer.max_bytes == cap and not writer.full
    assert [writer.write(packet, 0.1 * index) for index in range(5)] == [True, True, True, False, False]
    assert writer.write(b"", 1.0) is False  # 12 bytes would fit; still refused once full
    assert writer.full and writer.records == 3 and writer.refused == 3
    assert writer.bytes_written == len(TAKE_MAGIC) + 3 * record_size == writer.partial_path.stat().st_size
    writer.close()
    assert path.stat().st_size <= cap
    assert list(read_take(path, strict=True)) == [(0.1 * index, packet) for index in range(3)]


def test_take_writer_has_a_default_cap_and_rejects_a_cap_below_its_header(tmp_path: Path) -> None:
    from unreal_bridge.livelink_face import DEFAULT_TAKE_MAX_BYTES

    with TakeWriter(tmp_path / "a.llf") as writer:
        assert writer.max_bytes == DEFAULT_TAKE_MAX_BYTES == 256_000_000
    with pytest.raises(ValueError, match="max_bytes"):
        TakeWriter(tmp_path / "b.llf", max_bytes=len(TAKE_MAGIC) - 1)
    assert not (tmp_path / "b.llf.partial").exists()
    with TakeWriter(tmp_path / "c.llf", max_bytes=len(TAKE_MAGIC)) as writer:
        assert writer.write(b"", 0.0) is False
    assert list(read_take(tmp_path / "c.llf", strict=True)) == []


def test_take_writer_never_overwrites_an_interrupted_take(tmp_path: Path) -> None:
    """A crashed recording leaves NAME.partial; a new recording to NAME must not truncate it."""
    path = tmp_path / "take.llf"
    with pytest.raises(RuntimeError):
        with TakeWriter(path) as crashed:
            crashed.write(b"precious", 0.0)
            raise RuntimeError("crash")
    before = crashed.partial_path.read_bytes()
    with pytest.raises(FileExistsError, match="interrupted take"):
        TakeWriter(path)
    assert crashed.partial_path.read_bytes() == before
    assert list(read_take(crashed.partial_path)) == [(0.0, b"precious")]


def test_take_writer_discard_removes_the_partial_file(tmp_path: Path) -> None:
    writer = TakeWriter(tmp_path / "take.llf")
    writer.discard()
    assert list(tmp_path.iterdir()) == [] and writer.closed
    writer.discard()  # idempotent
    with pytest.raises(ValueError):
        writer.write(b"late", 0.0)


def test_truncated_take_replays_complete_records(tmp_path: Path) -> None:
    data = write_take(tmp_path / "full.llf", RECORDS).read_bytes()
    last_record_size = 12 + len(RECORDS[-1][1])
    for cut in range(1, last_record_size):  # every cut inside the final record
        path = tmp_path / "cut.llf"
        path.write_bytes(data[:-cut])
        assert list(read_take(path)) == RECORDS[:-1]
        with pytest.raises(ValueError, match="truncated"):
            list(read_take(path, strict=True))
    header_only = tmp_path / "empty.llf"
    header_only.write_bytes(TAKE_MAGIC)
    assert list(read_take(header_only, strict=True)) == []


@pytest.mark.parametrize("content", [b"", b"MEGALIVE-LLF-TAKE 2\n", b"hello world, not a take"])
def test_take_bad_magic(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.llf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="magic"):
        list(read_take(path))


def test_take_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.llf"
    path.write_bytes(TAKE_MAGIC + struct.pack(">dI", 0.0, 2**31) + b"x" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        list(read_take(path))
    path.write_bytes(TAKE_MAGIC + struct.pack(">dI", math.nan, 1) + b"x")
    with pytest.raises(ValueError, match="corrupt"):
        list(read_take(path))


class FakeTime:
    def __init__(self) -> None:
        self.now = 50.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5])
def test_replay_sends_at_recorded_times(tmp_path: Path, speed: float) -> None:
    path = write_take(tmp_path / "take.llf", RECORDS)
    fake = FakeTime()
    sends: list[tuple[float, bytes]] = []
    count = replay_take(
        path,
        address=(LOOPBACK, 9),
        speed=speed,
        sleep=fake.sleep,
        clock=fake.clock,
        send=lambda packet: sends.append((fake.now - 50.0, packet)),
    )
    assert count == len(RECORDS)
    assert [packet for _, packet in sends] == [packet for _, packet in RECORDS]
    for (sent_at, _), (recorded_at, _) in zip(sends, RECORDS):
        assert sent_at == pytest.approx(recorded_at / speed)


def test_replay_does_not_accumulate_send_overhead(tmp_path: Path) -> None:
    path = write_take(tmp_path / "take.llf", [(0.1 * index, b"p") for index in range(10)])
    fake = FakeTime()
    sends: list[float] = []

    def slow_send(packet: bytes) -> None:
        sends.append(fake.now - 50.0)
        fake.now += 0.03  # each send costs time; the schedule absorbs it

    replay_take(path, address=(LOOPBACK, 9), sleep=fake.sleep, clock=fake.clock, send=slow_send)
    assert sends == pytest.approx([0.1 * index for index in range(10)])


def test_replay_rejects_bad_speed(tmp_path: Path) -> None:
    path = write_take(tmp_path / "take.llf", RECORDS)
    for speed in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError):
            replay_take(path, address=(LOOPBACK, 9), speed=speed, send=lambda packet: None)


def test_replay_over_udp_reaches_the_receiver(tmp_path: Path) -> None:
    records = [(0.001 * index, make_packet("replayed", index)) for index in range(20)]
    path = write_take(tmp_path / "take.llf", records)
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as receiver:
        assert replay_take(path, address=(LOOPBACK, receiver.port), speed=math.inf) == 20
        poll_until(receiver, lambda: receiver.stats().received == 20)
        assert receiver.latest("replayed").time.frame == 19
