"""Protocol v1: round trips and every malformed input the decoder must refuse with the right code."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client import protocol
from client.protocol import ProtocolError, decode, encode, raw_buffer_from_array


def frames_of(message: list) -> list[bytes]:
    return [bytes(frame) for frame in message]


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=4),
    dtype=st.sampled_from([np.uint8, np.float32]),
    seq=st.integers(0, 2**62),
    name=st.text(max_size=50),
)
def test_raw_buffer_round_trip(shape: list[int], dtype: type, seq: int, name: str) -> None:
    array = (np.arange(math.prod(shape)) % 251).astype(dtype).reshape(shape)
    message = decode(frames_of(encode({"op": "frame", "id": 7, "session": 3, "seq": seq, "client": name}, [raw_buffer_from_array(array)])))
    assert message.op == "frame" and message.request_id == 7
    assert message.header["seq"] == seq and message.header["client"] == name
    np.testing.assert_array_equal(message.buffers[0].array(), array)
    assert message.buffers[0].array().dtype == dtype


def test_every_request_op_round_trips_and_unknown_keys_are_kept() -> None:
    for op in protocol.REQUEST_OPS:
        message = decode(frames_of(encode({"op": op, "id": 1, "future_field": [1, 2]})))
        assert message.op == op and message.header["future_field"] == [1, 2]


def test_encoded_buffer_round_trip() -> None:
    payload = b"\xff\xd8not really a jpeg"
    message = decode(frames_of(encode({"op": "frame", "id": 2}, [protocol.EncodedBuffer(codec="jpeg", data=memoryview(payload))])))
    assert isinstance(message.buffers[0], protocol.EncodedBuffer) and bytes(message.buffers[0].data) == payload


def test_error_reply_round_trips_without_request_id() -> None:
    message = decode(frames_of(protocol.error_frames("busy", "full", request_id=None)))
    assert message.op == "error" and message.header["code"] == "busy"


def header(**fields) -> bytes:
    return msgpack.packb({"v": 1, "id": 5, **fields})


BAD_MESSAGES = {
    "garbage bytes": ([b"\x00\xffgarbage\xc1"], "bad_request", None),
    "header not a map": ([msgpack.packb([1, 2, 3])], "bad_request", None),
    "huge array length claim": ([b"\xdd\xff\xff\xff\xff"], "bad_request", None),
    "huge string length claim": ([b"\xdb\x7f\xff\xff\xff" + b"x" * 10], "bad_request", None),
    "ext type": ([msgpack.packb({"v": 1, "op": "hello", "id": 1, "x": msgpack.ExtType(1, b"a")})], "bad_request", None),
    "version 2": ([msgpack.packb({"v": 2, "op": "hello", "id": 5})], "unsupported_version", 5),
    "unknown op": ([header(op="teleport")], "bad_request", 5),
    "truncated multipart": ([header(op="frame", buffers=[{"dtype": "|u1", "shape": [2, 2, 3]}])], "bad_request", 5),
    "size disagrees with shape": ([header(op="frame", buffers=[{"dtype": "|u1", "shape": [2, 2, 3]}]), b"x" * 11], "bad_request", 5),
    "dtype outside allow-list": ([header(op="frame", buffers=[{"dtype": "<f8", "shape": [1]}]), b"x" * 8], "bad_request", 5),
    "object dtype": ([header(op="frame", buffers=[{"dtype": "|O", "shape": [1]}]), b"x" * 8], "bad_request", 5),
    "negative shape": ([header(op="frame", buffers=[{"dtype": "|u1", "shape": [-1]}]), b""], "bad_request", 5),
    "too many dims": ([header(op="frame", buffers=[{"dtype": "|u1", "shape": [1, 1, 1, 1, 1]}]), b"x"], "bad_request", 5),
    "unknown codec": ([header(op="frame", buffers=[{"codec": "gif"}]), b"GIF89a"], "bad_request", 5),
    "id not an int": ([msgpack.packb({"v": 1, "op": "hello", "id": "five"})], "bad_request", None),
    "non-string map key": ([msgpack.packb({1: 2, "v": 1})], "bad_request", None),
    "empty message": ([], "bad_request", None),
}


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_malformed_messages_are_refused_with_the_right_code(name: str) -> None:
    frames, code, request_id = BAD_MESSAGES[name]
    with pytest.raises(ProtocolError) as raised:
        decode(frames)
    assert raised.value.code == code
    assert raised.value.request_id == request_id


def test_oversized_header_and_buffer_are_too_large() -> None:
    limits = protocol.Limits(max_header_bytes=128, max_buffer_bytes=1024)
    with pytest.raises(ProtocolError) as raised:
        decode([header(op="hello", padding="x" * 200)], limits)
    assert raised.value.code == "too_large"
    big = header(op="frame", buffers=[{"dtype": "|u1", "shape": [2048]}])
    with pytest.raises(ProtocolError) as raised:
        decode([big, b"x" * 2048], limits)
    assert raised.value.code == "too_large" and raised.value.request_id == 5


def test_encoder_refuses_disallowed_dtypes_and_unknown_ops() -> None:
    with pytest.raises(ValueError):
        raw_buffer_from_array(np.zeros(3, np.float64))
    with pytest.raises(ValueError):
        encode({"op": "teleport", "id": 1})
    with pytest.raises(ProtocolError):
        protocol.raw_buffer_from_bytes(b"abc", dtype="|u1", shape=[2, 2])
