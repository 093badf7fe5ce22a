"""The service against hostile and broken clients (issue: a server no message can stop, no client can
starve, no stranger can reach). Raw DEALER sockets speak the wire format directly, so each test sends
exactly the bytes an attacker would. One module on purpose (about 700 lines): every attack runs against the same
live-service fixtures and raw-socket helpers defined here."""

from __future__ import annotations

import io
import math
import struct
import threading
import time
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from client import protocol
from server import capture, imaging
from server.binding import BindRefused, check_bind_address
from server.engine import Engine
from server.one_euro import OneEuroConfig, OneEuroFilter, SignalClock
from server.service import AvatarService, ServiceConfig
from server.worker import MAX_HELD_PER_SESSION, RenderWorker

SMALL_LIMITS = protocol.Limits(max_buffer_bytes=64 * 1024)


@pytest.fixture(scope="module")
def module_engine(contract_model_path: Path) -> Engine:
    return Engine(model_path=contract_model_path, max_batch=4)


def started(engine: Engine, **options) -> AvatarService:
    service = AvatarService(engine=engine, config=ServiceConfig(**{"bind": "tcp://127.0.0.1:*", "max_batch": 4, **options}))
    service.start()
    return service


@pytest.fixture
def service(module_engine: Engine):
    service = started(module_engine, limits=SMALL_LIMITS)
    yield service
    service.stop()
    assert not service.is_running()


class Peer:
    """A raw DEALER that sends protocol frames and reads replies, with an optional routing identity."""

    def __init__(
        self, address: str, *, identity: bytes | None = None, context: zmq.Context | None = None, options: dict[int, int] | None = None
    ) -> None:
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            self.socket.setsockopt(zmq.ROUTING_ID, identity)
        for option, value in (options or {}).items():
            self.socket.setsockopt(option, value)
        self.socket.connect(address)
        self.next_id = 1

    def send(self, frames: list) -> None:
        self.socket.send_multipart(frames)

    def receive(self, timeout_ms: int = 30000) -> protocol.Message | None:  # generous: CI boxes are shared
        if not self.socket.poll(timeout_ms):
            return None
        return protocol.decode(self.socket.recv_multipart())

    def request(self, op: str, buffers: tuple = (), **fields) -> protocol.Message:
        request_id = self.next_id
        self.next_id += 1
        self.send(protocol.encode({"op": op, "id": request_id, **fields}, buffers))
        while True:
            reply = self.receive()
            assert reply is not None, f"no reply to {op}"
            if reply.request_id == request_id:
                return reply

    def open(self, **fields) -> tuple[int, str]:
        reply = self.request("open", **{"avatar": 0, **fields})
        assert reply.op == "open", reply.header
        return reply.header["session"], reply.header["token"]

    def frame(self, session: int, token: str, buffer: protocol.Buffer, **fields) -> protocol.Message:
        """Send one frame and return its final reply (texture or error), skipping `dropped` of older frames."""
        return self.request("frame", (buffer,), session=session, token=token, seq=0, **fields)

    def close(self) -> None:
        self.socket.close(linger=0)


def frame_buffer(seed: int = 0, size: int = 32) -> protocol.RawBuffer:
    return protocol.raw_buffer_from_array(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def assert_serving(service: AvatarService) -> None:
    """The service still answers and still renders, for a fresh, well-behaved client."""
    peer = Peer(service.bound_address)
    try:
        assert peer.request("hello", versions=[1]).op == "hello"
        session, token = peer.open()
        assert peer.frame(session, token, frame_buffer(7)).op == "texture"
    finally:
        peer.close()


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunks.append((kind, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    return b"".join(out)


def broken_second_idat_png() -> bytes:
    """A small PNG whose image data is split over two IDAT chunks, the second one garbage (valid CRC)."""
    chunks = png_chunks(png_bytes(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    data = b"".join(body for kind, body in chunks if kind == b"IDAT")
    head = [(k, b) for k, b in chunks if k == b"IHDR"]
    return png_from_chunks([*head, (b"IDAT", data[:20]), (b"IDAT", b"\xff" * 40), (b"IEND", b"")])


def bomb_png(side: int) -> bytes:
    """A 1-bit greyscale PNG of side×side black pixels: 13300² is about 22 KB on the wire and 530 MB once
    decoded to RGB. Compressed row by row, so the test never holds the decoded image in memory."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte, then the row's bits
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, colour type 0 (grey)
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", data), (b"IEND", b"")])


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is patched to declare width×height."""
    out = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(out, format="JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# ------------------------------------------------------------------------------------------------ 1, fuzz


@pytest.mark.parametrize(
    "descriptor",
    [
        {"dtype": ["|u1"], "shape": [3]},
        {"dtype": {"a": 1}, "shape": [3]},
        {"codec": ["png"]},
        {"codec": {"x": 1}},
        {"dtype": "|u1", "shape": {"a": 1}},
        {"dtype": "|u1", "shape": [True, 3]},
    ],
)
def test_an_unhashable_or_odd_descriptor_is_a_bad_request_not_the_end(service: AvatarService, descriptor: dict) -> None:
    peer = Peer(service.bound_address)
    peer.send([msgpack.packb({"v": 1, "op": "hello", "id": 4, "buffers": [descriptor]}), b"abc"])
    reply = peer.receive()
    assert reply is not None and reply.op == "error" and reply.header["code"] == "bad_request" and reply.request_id == 4
    peer.close()
    assert service.is_running()
    assert_serving(service)


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=8)
)
_values = st.recursive(
    _scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12
)
_field_names = st.sampled_from(
    [
        "v",
        "op",
        "id",
        "session",
        "token",
        "seq",
        "t",
        "buffers",
        "avatar",
        "driver",
        "format",
        "crop",
        "size",
        "filter",
        "landmarks",
        "names",
        "versions",
    ]
)
_headers = st.dictionaries(_field_names, st.one_of(_values, st.sampled_from([1, "frame", "open", "hello", "stats", "close"])), max_size=10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=_headers, buffers=st.lists(st.binary(max_size=64), max_size=3), raw=st.booleans(), junk=st.binary(max_size=40))
def test_no_message_stops_the_service(service: AvatarService, header: dict, buffers: list[bytes], raw: bool, junk: bytes) -> None:
    """Arbitrary headers (any keys our ops read, any values) and buffers: each gets a reply or is dropped,
    and the service, its worker and a well-behaved client carry on."""
    peer = Peer(service.bound_address)
    try:
        first = junk if raw else msgpack.packb(header, use_bin_type=True)
        peer.send([first, *buffers])
        peer.receive(timeout_ms=300)
    finally:
        peer.close()
    assert service.is_running() and service.engine_alive
    probe = Peer(service.bound_address)
    assert probe.request("hello", versions=[1]).op == "hello"
    probe.close()


@pytest.fixture(scope="module")
def driven_service(multi_driver_model_path: Path):
    """A server with image, arkit and landmarks sessions open, for fuzzing frames of every driver kind."""
    service = started(Engine(model_path=multi_driver_model_path, max_batch=4), limits=SMALL_LIMITS)
    owner = Peer(service.bound_address)
    sessions = {kind: owner.open(driver=kind) for kind in ("image", "arkit", "landmarks")}
    yield service, owner, sessions
    owner.close()
    service.stop()


_dtypes = st.one_of(st.sampled_from(["|u1", "<f4"]), _values)
_shapes = st.one_of(st.lists(st.integers(0, 80), min_size=1, max_size=4), _values)


@st.composite
def _buffer(draw) -> tuple[dict, bytes]:
    if draw(st.booleans()):
        codec = draw(st.one_of(st.sampled_from(["png", "jpeg"]), _values))
        kind = draw(st.sampled_from(["png", "jpeg", "junk", "bomb"]))
        data = {"png": png_bytes(np.zeros((8, 8, 3), np.uint8)), "bomb": bomb_png(2048), "junk": draw(st.binary(max_size=64))}.get(
            kind, jpeg_declaring(draw(st.integers(1, 20000)), draw(st.integers(1, 20000)))
        )
        return {"codec": codec}, data
    dtype, shape = draw(_dtypes), draw(_shapes)
    exact = (
        isinstance(dtype, str)
        and dtype in protocol.DTYPE_ITEMSIZE
        and isinstance(shape, list)
        and all(type(n) is int and n >= 0 for n in shape)
        and draw(st.booleans())
    )
    size = math.prod(shape) * protocol.DTYPE_ITEMSIZE[dtype] if exact else draw(st.integers(0, 64))
    if size > 8 * 1024:
        size = 0
    fill = draw(st.sampled_from([b"\x00", b"\xff", b"\x7f\xc0\x00\x00", b"\x3e\x80\x00\x00", b"\x01"]))
    return {"dtype": dtype, "shape": shape}, (fill * (size // len(fill) + 1))[:size]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["image", "arkit", "landmarks"]),
    op=st.sampled_from(list(protocol.REQUEST_OPS)),
    fields=st.dictionaries(_field_names.filter(lambda name: name not in ("v", "op", "id", "buffers")), _values, max_size=5),
    keep_session=st.booleans(),
    buffers=st.lists(_buffer(), max_size=2),
)
def test_well_formed_requests_with_hostile_fields_never_stop_the_service(
    driven_service, kind: str, op: str, fields: dict, keep_session: bool, buffers: list
) -> None:
    """Valid envelopes (v, op, id) around hostile fields and buffers, on live sessions of every driver kind."""
    service, owner, sessions = driven_service
    session, token = sessions[kind]
    header = {"v": 1, "op": op, "id": 77, **fields, "buffers": [descriptor for descriptor, _ in buffers]}
    if keep_session and op in ("frame", "close"):
        header.update(session=session, token=token)
    if op == "close":  # closing an owner's session would end the fuzz for that kind: close only strangers' ids
        header["session"] = 10_000
    owner.send([msgpack.packb(header, use_bin_type=True), *(data for _, data in buffers)])
    owner.receive(timeout_ms=2000)
    while owner.receive(timeout_ms=0) is not None:  # replies to earlier frames of the same session
        pass
    assert service.is_running() and service.engine_alive
    assert service.counters.internal_errors == 0, "a hostile field reached a code path that failed"


def test_any_failure_in_a_request_handler_is_an_internal_reply(service: AvatarService, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise KeyError("a bug a client found")

    monkeypatch.setitem(service._handlers, "stats", broken)
    peer = Peer(service.bound_address)
    reply = peer.request("stats")
    assert reply.op == "error" and reply.header["code"] == "internal"
    peer.close()
    assert service.is_running()
    monkeypatch.undo()
    assert_serving(service)
    assert service.counters.internal_errors == 1


def test_a_failing_service_loop_is_reported_as_a_failure(module_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    service = started(module_engine)

    def broken() -> None:
        raise OSError("the loop itself broke")

    monkeypatch.setattr(service, "_reap_idle_sessions", broken)
    service.wait(5.0)
    assert not service.is_running()
    assert service.failure is not None and "the loop itself broke" in service.failure


# ------------------------------------------------------------------------------------------------ 2, decode, engine thread


def test_a_png_that_breaks_the_decoder_is_that_frames_error(service: AvatarService) -> None:
    peer = Peer(service.bound_address)
    session, token = peer.open()
    reply = peer.frame(session, token, protocol.EncodedBuffer(codec="png", data=memoryview(broken_second_idat_png())))
    assert reply.op == "error" and reply.header["code"] == "bad_request"
    assert peer.frame(session, token, frame_buffer(1)).op == "texture"  # the same session renders on
    peer.close()
    assert service.engine_alive


def test_any_decoder_exception_is_a_bad_request(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise SyntaxError("broken PNG file")

    monkeypatch.setattr(imaging.Image, "open", explode)
    with pytest.raises(protocol.ProtocolError) as raised:
        imaging.decode_driver_image(protocol.EncodedBuffer(codec="png", data=memoryview(b"x")), max_pixels=100)
    assert raised.value.code == "bad_request"


def test_a_dead_engine_thread_is_restarted_and_reported(service: AvatarService, monkeypatch: pytest.MonkeyPatch) -> None:
    original = service.worker._render
    calls = {"n": 0}

    def dies_once(jobs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("worker bug")
        return original(jobs)

    monkeypatch.setattr(service.worker, "_render", dies_once)
    peer = Peer(service.bound_address)
    session, token = peer.open()
    first = peer.frame(session, token, frame_buffer(1))
    assert first.op == "error" and first.header["code"] == "internal"  # the frame in hand still got its one reply
    deadline = time.monotonic() + 10
    while not (service.engine_alive and service.counters.engine_restarts == 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert peer.frame(session, token, frame_buffer(2)).op == "texture"
    hello = peer.request("hello", versions=[1])
    assert hello.header["engine"]["alive"] is True and hello.header["engine"]["restarts"] == 1
    assert "worker bug" in hello.header["engine"]["last_failure"]
    stats = peer.request("stats")
    assert stats.header["server"]["engine_restarts"] == 1 and stats.header["engine"]["restarts"] == 1
    peer.close()


def test_a_failure_finishing_textures_answers_its_frames_and_restarts_the_engine(
    module_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finishing thread (pixels, watermark, encoding) fails on one batch: that batch's frames get `internal` errors,
    both threads are restarted, and the next frame is a texture."""
    original = RenderWorker._finish
    calls = {"n": 0}

    def fails_once(worker: RenderWorker, rendered):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("finisher bug")
        return original(worker, rendered)

    monkeypatch.setattr(RenderWorker, "_finish", fails_once)
    service = started(module_engine)
    try:
        peer = Peer(service.bound_address)
        session, token = peer.open()
        first = peer.frame(session, token, frame_buffer(1))
        assert first.op == "error" and first.header["code"] == "internal"
        replies = []
        deadline = time.monotonic() + 10
        while service.counters.engine_restarts < 1 and time.monotonic() < deadline:
            replies.append(peer.frame(session, token, frame_buffer(2)).op)  # the engine thread sees it at its next batch
        assert service.counters.engine_restarts == 1 and "finisher bug" in str(service.worker.failure)
        assert set(replies) <= {"texture", "error"}
        deadline = time.monotonic() + 10
        while not service.engine_alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert peer.frame(session, token, frame_buffer(3)).op == "texture"
        peer.close()
    finally:
        service.stop()


def test_frames_waiting_beyond_one_engine_batch_are_claimed_and_not_superseded(
    module_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engine batches of two, five sessions: while the engine runs, four sessions' frames wait; all four are claimed
    (run two at a time), so new frames of the last two sessions queue behind theirs instead of superseding them. Claiming
    one batch only, those two would be dropped (and, from clients streaming flat out, sent again and again)."""
    entered = {call: threading.Event() for call in (1, 2)}
    release = {call: threading.Event() for call in (1, 2)}
    calls = {"n": 0}
    original = module_engine.run

    def gated_run(driver, avatar, *, kind="image"):
        calls["n"] += 1
        call = calls["n"]
        if call in entered:
            entered[call].set()
            assert release[call].wait(20)
        return original(driver, avatar, kind=kind)

    monkeypatch.setattr(module_engine, "run", gated_run)
    service = started(module_engine, max_batch=2)
    try:
        peer = Peer(service.bound_address)
        sessions = [peer.open() for _ in range(5)]
        ids = iter(range(1000, 2000))

        def send(index: int, seq: int) -> None:
            session, token = sessions[index]
            frame = {"op": "frame", "id": next(ids), "session": session, "token": token, "seq": seq}
            peer.send(protocol.encode(frame, (frame_buffer(seq),)))

        def wait_pending(count: int) -> None:
            deadline = time.monotonic() + 10
            while len(service.worker.pending) != count and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(service.worker.pending) == count

        send(0, 0)
        assert entered[1].wait(10)  # session 0's frame in the engine
        for index in range(1, 5):
            send(index, 0)
        wait_pending(4)
        release[1].set()
        assert entered[2].wait(10)  # sessions 1 and 2 in the engine; 3 and 4 claimed beside them
        wait_pending(0)
        send(3, 1)
        send(4, 1)
        wait_pending(2)
        release[2].set()
        replies = [peer.receive() for _ in range(7)]
        assert all(reply is not None for reply in replies), "a frame got no reply"
        got = sorted((sessions.index(next(s for s in sessions if s[0] == r.header["session"])), r.header["seq"], r.op) for r in replies)
        assert got == [(0, 0, "texture"), (1, 0, "texture"), (2, 0, "texture"), (3, 0, "texture"), (3, 1, "texture"),
                       (4, 0, "texture"), (4, 1, "texture")]  # fmt: skip
        peer.close()
    finally:
        release[1].set()
        release[2].set()
        service.stop()


def test_a_session_with_two_frames_held_gets_no_more_claimed(module_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim's cap: a session that already has MAX_HELD_PER_SESSION frames waiting in the engine thread's hands keeps
    its newest frame pending (where a client sending without a window supersedes its own frames), while other sessions'
    frames are claimed; what a client can make the worker hold stays bounded."""
    entered, release = threading.Event(), threading.Event()
    original = module_engine.run

    def gated_run(driver, avatar, *, kind="image"):
        entered.set()
        assert release.wait(20)
        return original(driver, avatar, kind=kind)

    monkeypatch.setattr(module_engine, "run", gated_run)
    service = started(module_engine, max_batch=1)
    try:
        peer = Peer(service.bound_address)
        (first, first_token), (second, second_token) = peer.open(), peer.open()
        ids = iter(range(1000, 2000))
        for session, token, seq in ((first, first_token, 0), (first, first_token, 1), (second, second_token, 0)):
            peer.send(protocol.encode({"op": "frame", "id": next(ids), "session": session, "token": token, "seq": seq}, (frame_buffer(),)))
            if seq == 0 and session == first:
                assert entered.wait(10)  # the first frame in the engine; the next two wait
        deadline = time.monotonic() + 10
        while len(service.worker.pending) != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        held = service.worker.pending[first]
        claimed = service.worker._claim(wait=False, held=[held] * MAX_HELD_PER_SESSION)  # the engine thread is in the engine
        assert [job.session.session_id for job in claimed] == [second]
        assert list(service.worker.pending) == [first]
        peer.close()
    finally:
        release.set()
        service.stop()


def test_an_engine_thread_that_keeps_dying_stops_the_service_with_a_failure(module_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    service = started(module_engine, max_engine_restarts=2)

    def always(jobs):
        raise RuntimeError("worker bug")

    monkeypatch.setattr(service.worker, "_render", always)
    peer = Peer(service.bound_address)
    session, token = peer.open()
    deadline = time.monotonic() + 20
    while service.is_running() and time.monotonic() < deadline:
        peer.send(protocol.encode({"op": "frame", "id": 1, "session": session, "token": token, "seq": 0}, (frame_buffer(),)))
        time.sleep(0.05)
    peer.close()
    assert not service.is_running()
    assert service.failure is not None and "died 3 times" in service.failure


# ------------------------------------------------------------------------------------------------ 3, replies to clients that do not read


def test_replies_to_a_client_that_does_not_read_are_bounded_and_counted(module_engine: Engine) -> None:
    service = started(module_engine, queued_replies_per_client=2, max_output_pixels=1024 * 1024)
    try:
        hello = Peer(service.bound_address)
        limits = hello.request("hello", versions=[1]).header["limits"]
        assert limits["max_output_pixels"] == 1024 * 1024
        assert limits["max_queued_reply_bytes"] == 2 * (4 * 1024 * 1024 + protocol.DEFAULT_LIMITS.max_header_bytes) + 1024 * 1024
        too_big = hello.request("open", avatar=0, size=[1025, 1024])
        assert too_big.op == "error" and too_big.header["code"] == "too_large"
        # A client that does not read: its own ZeroMQ stops taking replies off the wire after one.
        deaf = Peer(service.bound_address, options={zmq.RCVHWM: 1, zmq.RCVBUF: 4096})
        session, token = deaf.open(size=[1024, 1024])
        for seq in range(60):  # 60 textures of 4 MiB unread: 240 MiB if nothing bounded them
            deaf.send(
                protocol.encode({"op": "frame", "id": 100 + seq, "session": session, "token": token, "seq": seq}, (frame_buffer(seq),))
            )
            time.sleep(0.02)
        deadline = time.monotonic() + 20
        while service.counters.reply_overflow == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.counters.reply_overflow > 0
        assert hello.request("stats").header["server"]["reply_overflow"] > 0
        assert_serving(service)
        deaf.close()
        hello.close()
    finally:
        service.stop()


# ------------------------------------------------------------------------------------------------ 4, face trackers


def test_crop_sessions_hold_no_face_tracker_until_they_stream_and_release_it(
    module_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mediapipe")
    from skimage import data as skimage_data

    made: list[capture.FaceCropper] = []
    closed: list[capture.FaceCropper] = []

    class CountedCropper(capture.FaceCropper):
        def __init__(self, *, config: capture.CropConfig) -> None:
            super().__init__(config=config)
            made.append(self)

        def close(self) -> None:
            if self._mesh is not None:
                closed.append(self)
            super().close()

    monkeypatch.setattr(capture, "FaceCropper", CountedCropper)
    service = started(module_engine, crop_idle_s=0.5)
    try:
        peer = Peer(service.bound_address)
        for _ in range(30):  # open and close without a frame: nothing is made, nothing is held
            session, token = peer.open(crop="auto")
            assert peer.request("close", session=session, token=token).op == "close"
        assert made == [] and service.worker.croppers == {}
        face = protocol.raw_buffer_from_array(np.ascontiguousarray(skimage_data.astronaut()))
        streaming, streaming_token = peer.open(crop="auto")
        assert peer.frame(streaming, streaming_token, face).op == "texture"
        assert len(made) == 1
        deadline = time.monotonic() + 10  # idle for crop_idle_s: released while the session stays open
        while len(closed) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert closed == made and streaming in service.sessions
        assert peer.frame(streaming, streaming_token, face).op == "texture"  # made again on the next frame
        assert len(made) == 2
        assert peer.request("close", session=streaming, token=streaming_token).op == "close"
        deadline = time.monotonic() + 10
        while len(closed) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert closed == made and service.worker.croppers == {}
        peer.close()
    finally:
        service.stop()


def test_crop_sessions_are_capped(module_engine: Engine) -> None:
    pytest.importorskip("mediapipe")
    service = started(module_engine, max_crop_sessions=2)
    try:
        peer = Peer(service.bound_address)
        peer.open(crop="auto")
        peer.open(crop="auto")
        third = peer.request("open", avatar=0, crop="auto")
        assert third.op == "error" and third.header["code"] == "busy"
        peer.close()
    finally:
        service.stop()


# ------------------------------------------------------------------------------------------------ 5, bombs and codecs


def test_decompression_bombs_are_refused_from_the_header(service: AvatarService) -> None:
    peer = Peer(service.bound_address)
    session, token = peer.open()
    bomb = bomb_png(13300)
    assert len(bomb) < 64 * 1024  # fits the wire: only the declared size gives it away
    began = time.perf_counter()
    reply = peer.frame(session, token, protocol.EncodedBuffer(codec="png", data=memoryview(bomb)))
    assert reply.op == "error" and reply.header["code"] == "too_large" and "13300×13300" in reply.header["message"]
    jpeg = peer.frame(session, token, protocol.EncodedBuffer(codec="jpeg", data=memoryview(jpeg_declaring(10000, 10000))))
    assert jpeg.op == "error" and jpeg.header["code"] == "too_large"
    print(f"two bombs refused in {time.perf_counter() - began:.3f} s")
    limit = peer.request("hello", versions=[1]).header["limits"]["max_image_pixels"]
    assert 3840 * 2160 <= limit < 10000 * 10000  # a 4K webcam frame fits
    peer.close()


@pytest.mark.parametrize("pillow_format", ["BMP", "TIFF", "GIF", "WEBP", "ICO", "TGA", "PPM"])
@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_only_the_declared_codec_is_decoded(service: AvatarService, pillow_format: str, codec: str) -> None:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out, format=pillow_format)
    peer = Peer(service.bound_address)
    session, token = peer.open()
    reply = peer.frame(session, token, protocol.EncodedBuffer(codec=codec, data=memoryview(out.getvalue())))
    assert reply.op == "error" and reply.header["code"] == "bad_request", reply.header
    peer.close()


def test_a_raw_frame_above_the_pixel_limit_is_too_large(module_engine: Engine) -> None:
    service = started(module_engine, max_image_pixels=100 * 100)
    try:
        peer = Peer(service.bound_address)
        session, token = peer.open()
        reply = peer.frame(session, token, frame_buffer(size=101))
        assert reply.op == "error" and reply.header["code"] == "too_large"
        assert peer.frame(session, token, frame_buffer(size=100)).op == "texture"
        peer.close()
    finally:
        service.stop()


# ------------------------------------------------------------------------------------------------ 6, 7: sessions per client, ownership


def test_one_client_cannot_take_every_session(module_engine: Engine) -> None:
    service = started(module_engine, max_sessions=6, max_sessions_per_client=4)
    try:
        greedy = Peer(service.bound_address)
        for _ in range(4):
            greedy.open()
        refused = greedy.request("open", avatar=0)
        assert refused.op == "error" and refused.header["code"] == "busy" and "this client" in refused.header["message"]
        other = Peer(service.bound_address)
        other.open()  # the server still has room for others
        other.close()
        greedy.close()
    finally:
        service.stop()


def test_a_vanished_clients_sessions_are_reaped_at_once_not_after_the_idle_timeout(module_engine: Engine) -> None:
    service = started(module_engine, session_idle_s=300.0)
    try:
        leaver = Peer(service.bound_address)
        for _ in range(3):
            leaver.open()
        assert len(service.sessions) == 3
        leaver.close()  # no close op, no reply pending: only the disconnect says it left
        deadline = time.monotonic() + 10
        while service.sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.sessions == {} and service.counters.disconnected_sessions == 3
        assert service.counters.reaped_sessions == 0
    finally:
        service.stop()


def test_stats_show_a_client_its_own_sessions_and_totals_for_the_rest(service: AvatarService) -> None:
    alice, bob = Peer(service.bound_address), Peer(service.bound_address)
    alice_session, alice_token = alice.open(avatar=1, size=[64, 48])
    alice.frame(alice_session, alice_token, frame_buffer())
    bob_session, _ = bob.open()
    stats = bob.request("stats").header
    assert [s["session"] for s in stats["sessions"]] == [bob_session]
    assert stats["other_clients"]["sessions"] == 1 and stats["other_clients"]["rendered"] == 1
    assert "avatar" not in stats["other_clients"] and "size" not in stats["other_clients"]
    alice.close()
    bob.close()


def test_a_reused_routing_id_cannot_drive_or_close_anothers_session(service: AvatarService) -> None:
    owner = Peer(service.bound_address, identity=b"victim")
    session, token = owner.open()
    owner.close()
    deadline = time.monotonic() + 10  # ZeroMQ refuses a second connection under an id in use: wait until the owner is gone
    while session in service.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    squatter = Peer(service.bound_address, identity=b"victim")  # the owner's id, on a new connection
    for fields in ({}, {"token": "0" * 32}, {"token": token[:-1] + "x"}):
        frame = squatter.request("frame", (frame_buffer(),), session=session, seq=0, **fields)
        assert frame.op == "error" and frame.header["code"] == "unknown_session"
        close = squatter.request("close", session=session, **fields)
        assert close.op == "error" and close.header["code"] == "unknown_session"
    squatter.close()


def test_a_session_needs_its_token(service: AvatarService) -> None:
    peer = Peer(service.bound_address)
    session, token = peer.open()
    assert len(token) == 32
    refused = peer.request("frame", (frame_buffer(),), session=session, seq=0)
    assert refused.op == "error" and refused.header["code"] == "unknown_session"
    assert peer.frame(session, token, frame_buffer()).op == "texture"
    peer.close()


# ------------------------------------------------------------------------------------------------ 8: message size


def test_parts_and_bytes_per_message_are_bounded(service: AvatarService) -> None:
    peer = Peer(service.bound_address)
    header = msgpack.packb({"v": 1, "op": "hello", "id": 3, "buffers": []})
    peer.send([header, *([b"x" * 1024] * (SMALL_LIMITS.max_parts + 3))])
    reply = peer.receive()
    assert reply is not None and reply.header["code"] == "too_large" and reply.request_id == 3
    assert service.counters.oversized == 1
    peer.close()


def test_a_frame_above_the_transport_limit_disconnects_before_it_is_buffered(service: AvatarService) -> None:
    assert SMALL_LIMITS.max_frame_bytes == SMALL_LIMITS.max_buffer_bytes
    peer = Peer(service.bound_address)
    header = msgpack.packb({"v": 1, "op": "hello", "id": 3, "buffers": [{"dtype": "|u1", "shape": [SMALL_LIMITS.max_buffer_bytes + 1]}]})
    peer.send([header, b"x" * (SMALL_LIMITS.max_buffer_bytes + 1)] * 1)
    assert peer.receive(timeout_ms=500) is None
    peer.close()
    assert_serving(service)


# ------------------------------------------------------------------------------------------------ 9: timestamps


def test_tiny_and_backward_timestamps_never_poison_a_filter() -> None:
    one_euro = OneEuroFilter(config=OneEuroConfig(min_cutoff_hz=1.0, beta=1.0))
    for t, x in [(0.0, 0.0), (5e-324, 1.0), (1e-320, 2.0), (-5.0, 3.0), (float("nan"), 4.0), (0.1, 0.5)]:
        assert np.isfinite(one_euro(np.array([x]), t)).all()
    clock = SignalClock()
    times = [
        clock(stamp, arrival)
        for stamp, arrival in [
            (0.0, 10.0),
            (5e-324, 10.03),
            (5e-324, 10.06),
            (1e300, 10.09),
            (-1.0, 10.12),
            (None, 10.15),
            (float("inf"), 10.15),
        ]
    ]
    steps = np.diff(times)
    assert (steps >= clock.min_step_s).all() and (steps <= clock.max_step_s).all()


def test_a_session_fed_absurd_stamps_keeps_rendering_faces(multi_driver_model_path: Path) -> None:
    service = started(Engine(model_path=multi_driver_model_path, max_batch=4))
    try:
        peer = Peer(service.bound_address)
        session, token = peer.open(driver="arkit")
        curves = protocol.raw_buffer_from_array(np.full(61, 0.2, np.float32))
        for stamp in (0.0, 5e-324, 1e-320, -3.0, 1e300, 0.5):
            reply = peer.frame(session, token, curves, t=stamp)
            assert reply.op == "texture", reply.header
            pixels = reply.buffers[0].array()
            assert pixels[..., 3].max() > 0 and pixels[..., :3].max() > 0  # not the black, transparent frame of a NaN filter
        peer.close()
    finally:
        service.stop()


# ------------------------------------------------------------------------------------------------ 10: binds


def test_ipv6_loopback_binds_and_serves(module_engine: Engine) -> None:
    service = AvatarService(engine=module_engine, config=ServiceConfig(bind="tcp://[::1]:*"))
    address = service.start()
    context = zmq.Context()
    try:
        peer = Peer(address, context=context, options={zmq.IPV6: 1})
        assert peer.request("hello", versions=[1]).op == "hello"
    finally:
        context.destroy(linger=0)
        service.stop()


def test_a_port_in_use_is_one_clear_error(module_engine: Engine, service: AvatarService) -> None:
    second = AvatarService(engine=module_engine, config=ServiceConfig(bind=service.bound_address))
    with pytest.raises(BindRefused) as raised:
        second.start()
    port = service.bound_address.rsplit(":", 1)[1]
    assert f"port {port} is already in use" in str(raised.value)


def test_ipc_sockets_only_in_a_private_folder(tmp_path: Path) -> None:
    with pytest.raises(BindRefused, match="abstract"):
        check_bind_address("ipc://@megalive")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)
    with pytest.raises(BindRefused, match="private folder"):
        check_bind_address(f"ipc://{shared}/megalive.sock")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    check_bind_address(f"ipc://{private}/megalive.sock")
    with pytest.raises(BindRefused, match="does not exist"):
        check_bind_address(f"ipc://{tmp_path}/missing/megalive.sock")
