"""Live Link Face v6 packet codec: curve names, frames, parser, encoder (unreal_bridge/livelink/packet.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unreal_bridge.livelink_helpers import build_packet, distinct_values, same_frame
from unreal_bridge.livelink.packet import (
    ARKIT_BLENDSHAPES,
    CURVE_NAMES,
    MAX_STRING_BYTES,
    PACKET_VERSION,
    ROTATION_NAMES,
    FaceFrame,
    FrameTime,
    PacketError,
    encode_packet,
    parse_packet,
)
from unreal_bridge.livelink.receiver import DEFAULT_PORT

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
        "import sys, unreal_bridge.livelink.packet, unreal_bridge.livelink.receiver, unreal_bridge.livelink.take\n"
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
