"""The texture feed's wire format and subscriber (client/feed.py), and the PNG sequence writer (client/png_sequence.py).

The subscriber is checked against a plain ZeroMQ PUB socket sending exactly the bytes under test (the
format's own publisher is tested in tests/server/test_feed.py)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from client.feed import (
    FEED_VERSION,
    MAX_HEADER_BYTES,
    FeedMessageError,
    TextureSubscriber,
    decode_feed_message,
    encode_feed_message,
)
from client.png_sequence import PngSequenceWriter, SequenceFolderError, frame_name
from client.protocol import raw_buffer_from_array


def texture(seed: int, *, height: int = 6, width: int = 5, channels: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def message(seed: int, *, seq: int, header_changes: dict[str, object] | None = None) -> list[bytes]:
    parts = encode_feed_message(seq=seq, texture=raw_buffer_from_array(texture(seed)), source_seq=seq + 100, avatar=2, published_at=12.5)
    header = json.loads(parts[0])
    header.update(header_changes or {})
    return [json.dumps(header).encode(), bytes(parts[1])]


def test_the_wire_format_is_a_json_header_and_the_raw_pixels() -> None:
    pixels = texture(1)
    parts = encode_feed_message(seq=7, texture=raw_buffer_from_array(pixels), source_seq=31, avatar=2, published_at=1730000000.25)
    assert len(parts) == 2
    header = json.loads(bytes(parts[0]).decode("utf-8"))  # plain JSON: any language reads it
    assert header == {"feed": FEED_VERSION, "seq": 7, "frame": 31, "avatar": 2, "t": 1730000000.25, "dtype": "|u1", "shape": [6, 5, 4]}
    assert bytes(parts[1]) == pixels.tobytes()  # rows top to bottom, no padding
    frame = decode_feed_message([bytes(part) for part in parts])
    assert (frame.seq, frame.source_seq, frame.avatar, frame.published_at) == (7, 31, 2, 1730000000.25)
    assert (frame.height, frame.width, frame.channels) == (6, 5, 4)
    assert np.array_equal(frame.array(), pixels)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"feed": 2}, "feed version 2"),
        ({"dtype": "<f4"}, "dtype"),
        ({"shape": [6, 5, 2]}, "shape"),
        ({"shape": [6, 5]}, "shape"),
        ({"shape": [6, 5, 3]}, "pixel bytes"),  # the bytes are H×W×4: the size check catches a lying shape
        ({"shape": [0, 5, 4]}, "shape"),
        ({"seq": -1}, "'seq'"),
        ({"seq": "7"}, "'seq'"),
        ({"t": None}, "'t'"),
    ],
)
def test_a_message_that_breaks_the_format_is_refused_with_one_line(change: dict[str, object], words: str) -> None:
    with pytest.raises(FeedMessageError) as raised:
        decode_feed_message(message(1, seq=0, header_changes=change))
    assert words in str(raised.value) and "\n" not in str(raised.value)


def test_frames_headers_and_sizes_are_checked_before_the_pixels_are_read() -> None:
    good = message(1, seq=0)
    with pytest.raises(FeedMessageError, match="2 frames"):
        decode_feed_message(good + [b"extra"])
    with pytest.raises(FeedMessageError, match="header of"):
        decode_feed_message([b" " * (MAX_HEADER_BYTES + 1), good[1]])
    with pytest.raises(FeedMessageError, match="JSON object"):
        decode_feed_message([b"\x80not json", good[1]])
    with pytest.raises(FeedMessageError, match="JSON object"):
        decode_feed_message([b"[1, 2]", good[1]])
    with pytest.raises(FeedMessageError, match="at most 100"):
        decode_feed_message(good, max_pixel_bytes=100)
    with pytest.raises(FeedMessageError, match="H×W×3 or H×W×4"):
        encode_feed_message(seq=0, texture=raw_buffer_from_array(np.zeros((4, 4), np.float32)), source_seq=0, avatar=0, published_at=0.0)
    assert decode_feed_message(message(1, seq=0, header_changes={"future_field": {"x": 1}})).seq == 0  # unknown keys are ignored


@pytest.fixture
def plain_publisher() -> Iterator[tuple[zmq.Socket, str]]:
    """A PUB on inproc: a send puts the message into the subscriber's queue before it returns, so what one
    receive_latest call finds is known exactly."""
    socket = zmq.Context.instance().socket(zmq.PUB)
    socket.setsockopt(zmq.LINGER, 0)
    address = f"inproc://feed-test-{uuid.uuid4().hex}"
    socket.bind(address)
    try:
        yield socket, address
    finally:
        socket.close()


def joined(publisher: zmq.Socket, subscriber: TextureSubscriber) -> None:
    """Send a probe until the subscriber gets one: a PUB drops everything sent before the subscription arrives."""
    deadline = time.monotonic() + 10
    while subscriber.receive_latest(timeout_ms=20) is None:
        assert time.monotonic() < deadline
        publisher.send_multipart(message(0, seq=0))


def test_the_subscriber_hands_out_the_newest_texture_and_counts_what_it_skipped_missed_and_refused(
    plain_publisher: tuple[zmq.Socket, str],
) -> None:
    publisher, address = plain_publisher
    with TextureSubscriber(address=address, queue=64) as subscriber:
        joined(publisher, subscriber)
        assert subscriber.receive_latest(timeout_ms=0) is None  # nothing new: None at once
        received = subscriber.counters.received
        for seq in (1, 2, 3):
            publisher.send_multipart(message(seq, seq=seq))
        publisher.send_multipart([b"not a feed message", b""])
        publisher.send_multipart(message(6, seq=6))  # 4 and 5 never come: this node missed them
        newest = subscriber.receive_latest(timeout_ms=5000)
        assert newest is not None and newest.seq == 6 and np.array_equal(newest.array(), texture(6))
        counters = subscriber.counters
        assert (counters.received - received, counters.skipped, counters.missed, counters.malformed) == (4, 3, 2, 1)
        assert subscriber.receive_latest(timeout_ms=0) is None
        publisher.send_multipart(message(9, seq=0))  # a restarted publisher counts from 0 again
        assert subscriber.wait_for_frame(10.0) is not None and subscriber.counters.restarts == 1


def test_a_subscriber_without_keys_says_the_publisher_needs_curve(tmp_path: Path) -> None:
    if not zmq.has("curve"):
        pytest.skip("this libzmq has no CURVE")
    from zmq.auth.thread import ThreadAuthenticator

    context = zmq.Context()
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(tmp_path))
    public, secret = zmq.curve_keypair()
    publisher = context.socket(zmq.PUB)
    publisher.curve_secretkey, publisher.curve_publickey, publisher.curve_server = secret, public, True
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.bind("tcp://127.0.0.1:*")
    try:
        with TextureSubscriber(address=publisher.getsockopt_string(zmq.LAST_ENDPOINT)) as subscriber:
            deadline = time.monotonic() + 10
            while subscriber.problem is None:
                assert time.monotonic() < deadline
                publisher.send_multipart(message(0, seq=0))
                assert subscriber.receive_latest(timeout_ms=20) is None
            assert "require" in subscriber.problem and "CURVE" in subscriber.problem  # requires, or may require (a hang-up)
    finally:
        publisher.close()
        auth.stop()
        context.term()


# -------------------------------------------------------------------------------------------------- PNG sequence


def test_png_sequence_is_numbered_by_seq_and_renamed_into_place(tmp_path: Path) -> None:
    folder = tmp_path / "shots" / "take1"  # made when missing
    writer = PngSequenceWriter(directory=folder)
    frames = {seq: texture(seq, channels=4 if seq % 2 else 3) for seq in (0, 1, 5)}
    for seq, pixels in frames.items():
        height, width, channels = pixels.shape
        assert writer.submit(seq=seq, pixels=pixels.tobytes(), width=width, height=height, channels=channels, block=True)
    writer.close()
    assert (writer.written, writer.not_written, writer.failure) == (3, 0, None)
    assert (
        sorted(path.name for path in folder.iterdir())
        == [frame_name(0), frame_name(1), frame_name(5)]
        == [
            "frame_000000.png",
            "frame_000001.png",
            "frame_000005.png",
        ]
    )
    for seq, pixels in frames.items():
        assert np.array_equal(np.asarray(Image.open(folder / frame_name(seq))), pixels)
    with pytest.raises(SequenceFolderError, match="already holds a PNG sequence"):
        PngSequenceWriter(directory=folder)  # a new recording never overwrites this one
    (tmp_path / "a file").write_bytes(b"")
    with pytest.raises(SequenceFolderError, match="cannot write PNGs"):
        PngSequenceWriter(directory=tmp_path / "a file")


def test_png_writer_that_cannot_keep_up_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    """``block=False`` (the relay's live loop): a full queue costs a frame, never a wait."""
    writer = PngSequenceWriter(directory=tmp_path, max_queued=1)
    big = texture(0, height=512, width=512).tobytes()
    accepted = [writer.submit(seq=seq, pixels=big, width=512, height=512, channels=4) for seq in range(40)]
    writer.close()
    assert accepted.count(False) == writer.dropped > 0  # 40 submits outrun one queued 512×512 frame
    assert writer.written == accepted.count(True) == len(list(tmp_path.glob("frame_*.png")))
    assert not list(tmp_path.glob("*.partial"))
    assert not writer.submit(seq=99, pixels=big, width=512, height=512, channels=4)  # closed: refused, counted


def test_png_writer_stops_on_a_write_error_and_says_so_once(tmp_path: Path) -> None:
    folder = tmp_path / "seq"
    writer = PngSequenceWriter(directory=folder)
    folder.rmdir()  # the folder vanishes under the writer (an unplugged disk)
    pixels = texture(0)
    for seq in range(3):
        writer.submit(seq=seq, pixels=pixels.tobytes(), width=5, height=6, channels=4, block=True)
    writer.close()
    assert writer.written == 0 and writer.not_written == 3
    assert writer.failure is not None and writer.failure.startswith("writing frame_000000.png to ") and "\n" not in writer.failure
