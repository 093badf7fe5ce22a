"""The service end to end on loopback: textures equal the engine's output, latest-wins, bad input,
vanishing clients, server restarts and clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from client import protocol
from client.client import AvatarClient, FrameDropped, FrameError, ServerError, ServerGoneError, Texture
from server import imaging
from server.binding import BindRefused, check_bind_address
from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from tests.server.test_hardening import bomb_png

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_LIMITS = protocol.Limits(max_buffer_bytes=64 * 1024)


@pytest.fixture
def engine(contract_model_path: Path) -> Engine:
    return Engine(model_path=contract_model_path, max_batch=4)


@pytest.fixture
def service(engine: Engine):
    service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*", limits=SMALL_LIMITS, max_batch=4))
    service.start()
    yield service
    service.stop()
    assert not service.is_running()


def driver_frame(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def wait_for(client: AvatarClient, kind: type, *, timeout_s: float = 10.0) -> list:
    """Poll until an event of `kind` arrives; returns every event seen."""
    events: list = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events += client.poll(timeout_ms=50)
        if any(isinstance(e, kind) for e in events):
            return events
    raise AssertionError(f"no {kind.__name__} within {timeout_s} s; saw {events}")


def render_one(client: AvatarClient, session: int, frame: np.ndarray) -> Texture:
    seq = client.send_frame(session, frame)
    assert seq is not None
    events = wait_for(client, Texture)
    return next(e for e in events if isinstance(e, Texture) and e.seq == seq)


def test_texture_equals_the_engines_output_for_that_frame(service: AvatarService, engine: Engine) -> None:
    with AvatarClient(address=service.bound_address) as client:
        info = client.hello()
        assert info.protocol == 1 and info.models[0]["avatars"] == 3
        assert [a.name for a in client.avatars()] == ["ada", "bo", "cy"]
        session = client.open(avatar=2)
        frame = driver_frame(1)
        texture = render_one(client, session, frame)
    expected_output = engine.run(imaging.to_engine_batch([frame]), np.array([2]))
    expected = imaging.to_texture_pixels(expected_output.rgb, expected_output.alpha)[0]
    pixels = texture.buffer.array()
    assert pixels.shape == (32, 32, 4) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1  # batch size may differ by rounding only
    assert set(texture.timings) >= {"decode", "crop", "infer", "encode"}


def test_avatars_differ_and_output_formats_and_sizes(service: AvatarService) -> None:
    with AvatarClient(address=service.bound_address) as client:
        frame = driver_frame(2)
        rgba = [render_one(client, client.open(avatar=a), frame).buffer.array() for a in (0, 1)]
        assert not np.array_equal(rgba[0], rgba[1])
        rgb = render_one(client, client.open(avatar=0, output_format="rgb8", size=(48, 64)), frame).buffer.array()
        assert rgb.shape == (48, 64, 3)
        jpeg = render_one(client, client.open(avatar=0, output_format="jpeg"), frame).buffer
        assert imaging.decode_texture(jpeg).shape == (32, 32, 3)
        big_driver = np.ascontiguousarray(np.repeat(np.repeat(frame, 2, 0), 2, 1))  # 64×64 driver is resized
        assert render_one(client, client.open(avatar=0), big_driver).buffer.array().shape == (32, 32, 4)


def test_latest_wins_under_a_flood(service: AvatarService) -> None:
    with AvatarClient(address=service.bound_address, max_in_flight=10_000, timeout_s=20.0) as client:
        session = client.open(avatar=0)
        sent = [client.send_frame(session, driver_frame(i % 4)) for i in range(300)]
        textures, dropped = [], []
        deadline = time.monotonic() + 30
        while len(textures) + len(dropped) < len(sent) and time.monotonic() < deadline:
            for event in client.poll(timeout_ms=50):
                (textures if isinstance(event, Texture) else dropped).append(event)
                assert not isinstance(event, FrameError), event
        # Every frame got an answer: rendered or dropped, never left waiting.
        assert len(textures) + len(dropped) == len(sent)
        assert dropped and all(isinstance(d, FrameDropped) for d in dropped)
        assert len(textures) < len(sent)
        assert max(t.seq for t in textures) == sent[-1]  # the newest frame was rendered
        stats = client.stats()
    counters = next(s for s in stats["sessions"] if s["avatar"] == 0)
    assert counters["received"] == 300 and counters["dropped"] == len(dropped) and counters["rendered"] == len(textures)


def test_batches_sessions_into_one_engine_call(service: AvatarService) -> None:
    with AvatarClient(address=service.bound_address, max_in_flight=4) as client:
        sessions = [client.open(avatar=i % 3) for i in range(4)]
        for _ in range(10):
            for session in sessions:
                client.send_frame(session, driver_frame(session))
            time.sleep(0.01)
        deadline = time.monotonic() + 20
        while any(client.in_flight(s) for s in sessions) and time.monotonic() < deadline:
            client.poll(timeout_ms=50)
        assert client.stats()["engine"]["mean_batch"] > 1.0


def raw_dealer(address: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    return socket


def exchange(socket: zmq.Socket, frames: list[bytes], timeout_ms: int = 5000) -> protocol.Message | None:
    socket.send_multipart(frames)
    if not socket.poll(timeout_ms):
        return None
    return protocol.decode(socket.recv_multipart())


def packed(**fields) -> bytes:
    return msgpack.packb({"v": 1, "id": 9, **fields})


def test_bad_inputs_get_error_replies_while_other_sessions_keep_streaming(service: AvatarService) -> None:
    good = AvatarClient(address=service.bound_address)
    good_session = good.open(avatar=1)
    bad = raw_dealer(service.bound_address)
    opened = exchange(bad, [packed(op="open", avatar=0)])
    bad_session = opened.header["session"]
    frame_header = {"op": "frame", "session": bad_session, "token": opened.header["token"], "seq": 0}
    cases = {
        "garbage bytes": ([b"\x00\xff garbage \xc1"], "bad_request", None),
        "header not a map": ([msgpack.packb("just a string")], "bad_request", None),
        "huge msgpack length claim": ([b"\xdf\xff\xff\xff\xff"], "bad_request", None),
        "truncated multipart": ([packed(**frame_header, buffers=[{"dtype": "|u1", "shape": [32, 32, 3]}])], "bad_request", 9),
        "v 2": ([msgpack.packb({"v": 2, "op": "hello", "id": 9})], "unsupported_version", 9),
        "hello without v1": ([packed(op="hello", versions=[2, 3])], "unsupported_version", 9),
        "unknown op": ([packed(op="dance")], "bad_request", 9),
        "reply op sent as request": ([packed(op="texture")], "bad_request", 9),
        "unknown session": ([packed(op="frame", session=999, seq=0, buffers=[{"dtype": "|u1", "shape": [1]}]), b"x"], "unknown_session", 9),
        "unknown avatar": ([packed(op="open", avatar=42)], "unknown_avatar", 9),
        "unknown driver kind": ([packed(op="open", avatar=0, driver="telepathy")], "bad_request", 9),
        "driver the model lacks": ([packed(op="open", avatar=0, driver="arkit")], "bad_request", 9),
        "size disagrees with shape": (
            [packed(**frame_header, buffers=[{"dtype": "|u1", "shape": [32, 32, 3]}]), b"x" * 100],
            "bad_request",
            9,
        ),
        "dtype outside allow-list": ([packed(**frame_header, buffers=[{"dtype": "<i8", "shape": [4]}]), b"x" * 32], "bad_request", 9),
        "output above the size limit": ([packed(op="open", avatar=0, size=[4096, 4096])], "too_large", 9),
        "driver of the wrong rank": ([packed(**frame_header, buffers=[{"dtype": "|u1", "shape": [7]}]), b"x" * 7], "bad_request", 9),
        "undecodable jpeg": ([packed(**frame_header, buffers=[{"codec": "jpeg"}]), b"not a jpeg"], "bad_request", 9),
        "NaN pixels": (
            [packed(**frame_header, buffers=[{"dtype": "<f4", "shape": [2, 2, 3]}]), np.full(12, np.nan, np.float32).tobytes()],
            "bad_request",
            9,
        ),
    }
    for name, (frames, code, request_id) in cases.items():
        reply = exchange(bad, frames)
        assert reply is not None, f"{name}: no reply"
        assert reply.op == "error" and reply.header["code"] == code, f"{name}: {reply.header}"
        assert reply.header["id"] == request_id, name
        assert render_one(good, good_session, driver_frame(3)).buffer.array().shape == (32, 32, 4), name
    stats = good.stats()
    assert stats["server"]["rejected"] + stats["server"]["bad_frames"] >= len(cases)
    assert [s["session"] for s in stats["sessions"]] == [good_session_id(good)]  # the good client sees its own only
    assert stats["other_clients"]["sessions"] == 1 and stats["other_clients"]["errors"] >= 6
    bad_stats = exchange(bad, [packed(op="stats")])
    bad_counters = next(s for s in bad_stats.header["sessions"] if s["session"] == bad_session)
    assert bad_counters["errors"] >= 6
    # A frame above ZeroMQ's MAXMSGSIZE (the buffer limit) disconnects that peer, whose sessions close; the server carries on.
    bad.send_multipart([packed(**frame_header, buffers=[{"dtype": "|u1", "shape": [1]}]), b"x" * (SMALL_LIMITS.max_frame_bytes + 1)])
    assert render_one(good, good_session, driver_frame(4)).buffer.array().shape == (32, 32, 4)
    deadline = time.monotonic() + 10
    while good.stats()["other_clients"]["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert good.stats()["server"]["disconnected_sessions"] == 1
    bad.close()
    good.close()


def good_session_id(client: AvatarClient) -> int:
    (state,) = client._sessions.values()
    return state.server_id


def test_a_client_that_vanishes_mid_stream_loses_its_sessions_only(engine: Engine) -> None:
    """A vanished client's sessions close when its connection ends, or when a reply to it cannot be
    routed, or when they idle out; the other client's session goes on."""
    service = AvatarService(
        engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*", limits=SMALL_LIMITS, max_batch=4, session_idle_s=2.0)
    )
    service.start()
    try:
        good = AvatarClient(address=service.bound_address)
        good_session = good.open(avatar=0)
        leaver = AvatarClient(address=service.bound_address, max_in_flight=50)
        leaving_session = leaver.open(avatar=1)
        for i in range(50):
            leaver.send_frame(leaving_session, driver_frame(i))
        leaver._drop_socket()  # vanish without a word: no close op, replies still coming
        deadline = time.monotonic() + 30  # generous: a loaded box is slow to notice
        while time.monotonic() < deadline:
            render_one(good, good_session, driver_frame(5))  # the good session stays busy, so it never idles out
            stats = good.stats()
            if stats["other_clients"]["sessions"] == 0:
                break
        assert [s["avatar"] for s in stats["sessions"]] == [0] and stats["other_clients"]["sessions"] == 0
        server = stats["server"]
        assert server["unroutable"] + server["reaped_sessions"] + server["disconnected_sessions"] >= 1
        good.close()
    finally:
        service.stop()


def test_session_belongs_to_the_client_that_opened_it(service: AvatarService) -> None:
    owner = AvatarClient(address=service.bound_address)
    owner.open(avatar=0)
    server_id = next(iter(owner._sessions.values())).server_id
    intruder = raw_dealer(service.bound_address)
    reply = exchange(intruder, [packed(op="close", session=server_id)])
    assert reply.header["code"] == "unknown_session"
    intruder.close()
    owner.close()


def test_client_reports_a_missing_server_and_reconnects_when_it_returns(engine: Engine, address: str) -> None:
    client = AvatarClient(address=address, timeout_s=0.5)
    with pytest.raises(ServerGoneError):  # the timeout ends the wait (pytest-timeout catches a hang)
        client.hello()

    first = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    first.start()
    session = client.open(avatar=1)
    render_one(client, session, driver_frame(6))
    client.send_frame(session, driver_frame(7))
    first.stop()
    with pytest.raises(ServerGoneError):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            client.poll(timeout_ms=50)
            client.send_frame(session, driver_frame(8))
    with pytest.raises(ServerGoneError):
        client.send_frame(session, driver_frame(8))  # still gone: a clear error, not a hang

    second = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    second.start()
    try:
        texture = render_one(client, session, driver_frame(9))  # same handle, session reopened behind it
        assert texture.session == session
    finally:
        client.close()
        second.stop()


def test_enroll_is_refused_clearly_and_close_works(service: AvatarService) -> None:
    with AvatarClient(address=service.bound_address) as client:
        with pytest.raises(ServerError) as raised:
            client._request({"op": "enroll", "name": "x"})
        assert raised.value.code == "bad_request" and "contract v1 model" in raised.value.message  # no embedder to enroll with
        session = client.open(avatar=0)
        client.close_session(session)
        assert client.stats()["sessions"] == []


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:5555", "tcp://192.168.1.5:5555", "tcp://example.com:5555", "udp://127.0.0.1:1"])
def test_non_loopback_binds_are_refused(address: str) -> None:
    with pytest.raises(BindRefused):
        check_bind_address(address)


@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5555", "tcp://127.0.0.1:*", "inproc://megalive"]
)
def test_loopback_binds_are_allowed(address: str) -> None:
    check_bind_address(address)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_shuts_down_cleanly_on_signals(contract_model_path: Path, signum: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "megalive", "serve", "--model", str(contract_model_path), "--bind", "tcp://127.0.0.1:*"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    line = process.stdout.readline()
    assert "serving contract" in line, line + process.stderr.read()
    address = line.strip().rsplit(" on ", 1)[1]
    with AvatarClient(address=address, timeout_s=5) as client:  # a connected client must not hold shutdown up
        session = client.open(avatar=0)
        bomb = protocol.EncodedBuffer(codec="png", data=memoryview(bomb_png(13300)))
        client.send_frame(session, bomb)  # a decompression bomb just sent must not hold shutdown up either
        os.kill(process.pid, signum)
        out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert "stopped" in out


def test_serve_names_a_port_in_use_in_one_line(contract_model_path: Path, engine: Engine) -> None:
    holder = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    address = holder.start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "megalive", "serve", "--model", str(contract_model_path), "--bind", address],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )
    finally:
        holder.stop()
    port = address.rsplit(":", 1)[1]
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"megalive serve: cannot bind {address}: port {port} is already in use (another megalive serve?)"
    ]


def test_serve_refuses_a_public_bind_and_a_missing_model(contract_model_path: Path, tmp_path: Path) -> None:
    public = subprocess.run(
        [sys.executable, "-m", "megalive", "serve", "--model", str(contract_model_path), "--bind", "tcp://0.0.0.0:5555"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert public.returncode == 2 and "refusing to bind" in public.stderr and len(public.stderr.strip().splitlines()) == 1
    missing = subprocess.run(
        [sys.executable, "-m", "megalive", "serve", "--model", str(tmp_path / "none.onnx")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert missing.returncode == 2 and "model file not found" in missing.stderr


def test_a_server_of_another_protocol_version_is_reported_as_such(future_protocol_server: str) -> None:
    # A long timeout: a ServerError (not ServerGoneError) proves the answer was read, not timed out.
    client = AvatarClient(address=future_protocol_server, timeout_s=60.0)
    with pytest.raises(ServerError) as raised:
        client.hello()
    assert raised.value.code == "unsupported_version" and "another protocol" in raised.value.message
    client.close()
