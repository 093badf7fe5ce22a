"""AvatarClient against the real service where it can show the case (session tokens, hello's engine
state, CURVE keys accepted and refused), and against a small stand-in peer where the real service
cannot be made to misbehave on demand (an engine that drops every frame, a server killed with frames
in flight, replies that arrive after a reconnect)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.auth

from client import protocol
from client.client import (
    SERVER_GONE,
    AvatarClient,
    CurveClientKeys,
    CurveKeyError,
    FrameDropped,
    FrameError,
    ServerGoneError,
    Texture,
    load_curve_client_keys,
)
from server.engine import Engine
from server.service import AvatarService, ServiceConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAME = np.full((32, 32, 3), 128, np.uint8)
HEX_TOKEN = re.compile(r"[0-9a-f]{32}")


# ------------------------------------------------------------------------------------------------
# CURVE key files (shared with the host tests)


@dataclass(frozen=True)
class CurveFiles:
    """pyzmq certificate files for a CURVE server, one allowed client and one stranger it does not allow."""

    server_public: Path
    server_secret: Path
    client_public: Path
    client_secret: Path
    stranger_public: Path
    stranger_secret: Path
    allow_dir: Path


def make_curve_files(folder: Path) -> CurveFiles:
    from server.keys import new_keypair

    server_public, server_secret = new_keypair(folder / "server", "server")
    client_public, client_secret = new_keypair(folder / "client", "client")
    stranger_public, stranger_secret = new_keypair(folder / "stranger", "stranger")
    allow_dir = folder / "allow"
    allow_dir.mkdir()
    shutil.copy(client_public, allow_dir / client_public.name)
    return CurveFiles(
        server_public=server_public,
        server_secret=server_secret,
        client_public=client_public,
        client_secret=client_secret,
        stranger_public=stranger_public,
        stranger_secret=stranger_secret,
        allow_dir=allow_dir,
    )


def curve_service(engine: Engine, files: CurveFiles, *, bind: str = "tcp://127.0.0.1:*") -> AvatarService:
    """The real service with CURVE on: its key pair and the allow folder that holds the client's public key."""
    from server.keys import load_server_keys

    keys = load_server_keys(secret_file=files.server_secret, allow_dir=files.allow_dir)
    return AvatarService(engine=engine, config=ServiceConfig(bind=bind, curve=keys))


@pytest.fixture
def curve_files(tmp_path: Path) -> CurveFiles:
    return make_curve_files(tmp_path / "keys")


@pytest.fixture
def service(engine: Engine) -> Iterator[AvatarService]:
    service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    service.start()
    yield service
    service.stop()


@pytest.fixture
def curve_server(engine: Engine, curve_files: CurveFiles) -> Iterator[AvatarService]:
    service = curve_service(engine, curve_files)
    service.start()
    yield service
    service.stop()


# ------------------------------------------------------------------------------------------------
# A stand-in peer


class FakeServer:
    """A protocol-v1 peer on a ROUTER (a thread of its own): hello and open as the real server answers
    them, frames as ``frames`` says: "dropped" (an engine that died and drops everything), "texture",
    or "hold" (never answered until ``answer_held``). Not our server: the cases it stages cannot be
    produced on demand with the real one."""

    def __init__(self, *, frames: str, context: zmq.Context | None = None, curve_secret: bytes | None = None) -> None:
        self.frames = frames
        self.frame_headers: list[dict[str, Any]] = []
        self.socket = (context or zmq.Context.instance()).socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve_secret is not None:
            self.socket.curve_secretkey = curve_secret
            self.socket.curve_server = True
        self.address = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"
        self._held: list[int] = []  # request ids of frames not answered yet
        self._last_peer = b""
        self._opens = 0
        self._commands: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the ROUTER: to the client, the server is gone (its connections end)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.socket.close(linger=0)

    def run(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the server's thread (the socket belongs to it) and wait for it."""
        done = threading.Event()
        self._commands.put((command, done))
        assert done.wait(5.0)

    def answer_held(self) -> None:
        """Texture replies for every held frame, sent to the newest connection (a client that reconnected)."""

        def answer() -> None:
            for request_id in self._held:
                self._send(self._last_peer, {"op": "texture", "id": request_id}, (protocol.raw_buffer_from_array(FRAME),))
            self._held.clear()

        self.run(answer)

    def held(self) -> int:
        return len(self._held)

    def _send(self, peer: bytes, header: dict[str, Any], buffers: tuple[protocol.Buffer, ...] = ()) -> None:
        self.socket.send_multipart([peer, *protocol.encode(header, buffers)])

    def _serve(self) -> None:
        while not self._stop.is_set():
            while not self._commands.empty():
                command, done = self._commands.get()
                command()
                done.set()
            if not self.socket.poll(10):
                continue
            peer, *frames = self.socket.recv_multipart()
            self._last_peer = peer
            self._answer(peer, protocol.decode(frames))

    def _answer(self, peer: bytes, message: protocol.Message) -> None:
        rid = message.request_id
        if message.op == "hello":
            self._send(peer, {"op": "hello", "id": rid, "server": "fake", "protocol": 1})
        elif message.op == "open":
            self._opens += 1
            self._send(peer, {"op": "open", "id": rid, "session": self._opens, "token": f"{self._opens:032x}"})
        elif message.op == "frame":
            self.frame_headers.append(dict(message.header))
            if self.frames == "dropped":
                self._send(peer, {"op": "dropped", "id": rid})
            elif self.frames == "texture":
                self._send(peer, {"op": "texture", "id": rid}, (protocol.raw_buffer_from_array(FRAME),))
            else:
                self._held.append(rid)
        elif message.op == "close":
            self._send(peer, {"op": "close", "id": rid, "ok": True})


def wait_until(condition: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def events_until(client: AvatarClient, done: Callable[[list], bool], *, timeout_s: float = 10.0) -> list:
    events: list = []
    deadline = time.monotonic() + timeout_s
    while not done(events):
        assert time.monotonic() < deadline, f"saw only {events}"
        events += client.poll(timeout_ms=20)
    return events


# ------------------------------------------------------------------------------------------------
# Tokens and hello


def test_frames_and_close_carry_the_sessions_token_which_changes_on_reopen(engine: Engine, address: str) -> None:
    """The server answers unknown_session to a frame or close without the open's token: rendering proves it is sent."""
    first = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    first.start()
    client = AvatarClient(address=address, timeout_s=2.0)
    try:
        session = client.open(avatar=1)
        token = client._sessions[session].token
        assert token is not None and HEX_TOKEN.fullmatch(token)
        client.send_frame(session, FRAME)
        assert any(isinstance(e, Texture) for e in events_until(client, lambda seen: bool(seen)))
    finally:
        first.stop()
    second = AvatarService(engine=engine, config=ServiceConfig(bind=address))  # a restart: sessions and tokens are new
    second.start()
    try:
        client.reconnect()
        reopened = client._sessions[session].token
        assert reopened is not None and HEX_TOKEN.fullmatch(reopened) and reopened != token
        client.send_frame(session, FRAME)
        events = events_until(client, lambda seen: any(isinstance(e, Texture) for e in seen))
        assert not [e for e in events if isinstance(e, FrameError) and e.code != SERVER_GONE]
        client.close_session(session)  # raises on any error but unknown_session; the server must have closed it
        assert client.stats()["sessions"] == []
    finally:
        client.close()
        second.stop()


def test_hello_reports_the_engine_and_every_limit_and_tolerates_a_server_that_says_less(service: AvatarService) -> None:
    with AvatarClient(address=service.bound_address) as client:
        info = client.hello()
    assert info.engine["alive"] is True and info.engine["restarts"] == 0
    assert {
        "max_message_bytes",
        "max_buffer_bytes",
        "max_image_pixels",
        "max_output_pixels",
        "max_sessions",
        "max_sessions_per_client",
        "max_queued_reply_bytes",
        "max_batch",
    } <= set(info.limits)
    with FakeServer(frames="texture") as fake, AvatarClient(address=fake.address) as client:
        info = client.hello()  # no models, capabilities, limits or engine in its reply
    assert (info.engine, info.limits, info.models, info.capabilities) == ({}, {}, [], {})


def test_a_server_without_tokens_is_still_served() -> None:
    """A reply without "token" (an older server): the client sends none rather than a wrong one."""

    def open_without_token(peer: bytes, message: protocol.Message) -> None:
        fake._send(peer, {"op": "open", "id": message.request_id, "session": 7})

    with FakeServer(frames="texture") as fake, AvatarClient(address=fake.address) as client:
        original = fake._answer
        fake._answer = lambda peer, message: (open_without_token if message.op == "open" else original)(peer, message)
        session = client.open(avatar=0)
        client.send_frame(session, FRAME)
        events_until(client, lambda seen: any(isinstance(e, Texture) for e in seen))
    assert fake.frame_headers[0]["session"] == 7 and "token" not in fake.frame_headers[0]


def test_an_ipv6_loopback_server_is_reached(engine: Engine) -> None:
    service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://[::1]:*"))
    address = service.start()
    try:
        with AvatarClient(address=address, timeout_s=2.0) as client:
            assert client.hello().protocol == 1
    finally:
        service.stop()


# ------------------------------------------------------------------------------------------------
# A server that stops making progress


def test_a_server_that_drops_every_frame_is_a_gone_server() -> None:
    """An engine that died behind a live ROUTER: every frame is answered `dropped`, forever. Those replies are
    not progress, so the client says the server is gone within its timeout instead of streaming into nothing."""
    with FakeServer(frames="dropped") as fake:
        client = AvatarClient(address=fake.address, timeout_s=0.5)
        session = client.open(avatar=0)
        dropped = 0
        began = time.monotonic()
        with pytest.raises(ServerGoneError, match="drops every frame") as raised:
            while time.monotonic() - began < 10:
                if client.can_send(session):
                    client.send_frame(session, FRAME)
                dropped += sum(isinstance(e, FrameDropped) for e in client.poll(timeout_ms=10))
        assert time.monotonic() - began < 5 and dropped >= 2
        assert len(str(raised.value).splitlines()) == 1 and not client.connected
        leftovers = client.poll()  # dropped replies read by the poll that raised, then one event per frame in flight
        assert all(isinstance(e, (FrameDropped, FrameError)) for e in leftovers)
        assert all(e.code == SERVER_GONE for e in leftovers if isinstance(e, FrameError))
        assert client.poll() == []
        client.close()


def test_a_streaming_server_that_drops_superseded_frames_is_not_gone(service: AvatarService) -> None:
    """The other side of the rule above: latest-wins drops beside textures are a healthy server."""
    with AvatarClient(address=service.bound_address, timeout_s=0.5, max_in_flight=6) as client:
        session = client.open(avatar=0)
        textures = dropped = 0
        began = time.monotonic()
        while time.monotonic() - began < 2.0:  # four timeouts long
            while client.can_send(session):  # bursts: the server renders one and the newest supersedes the rest
                client.send_frame(session, FRAME)
            events = client.poll(timeout_ms=5)
            textures += sum(isinstance(e, Texture) for e in events)
            dropped += sum(isinstance(e, FrameDropped) for e in events)
            time.sleep(0.025)  # about 240 frames a second at most: under the server's per-connection message rate
        assert textures > 0 and dropped > 0 and client.connected


HOLDING_SERVER = """
import zmq
from client import protocol

router = zmq.Context.instance().socket(zmq.ROUTER)
print(router.bind_to_random_port("tcp://127.0.0.1"), flush=True)
while True:
    peer, *frames = router.recv_multipart()
    message = protocol.decode(frames)
    if message.op == "frame":
        continue  # never answered: an engine busy forever
    reply = {"op": message.op, "id": message.request_id, "protocol": 1}
    if message.op == "open":
        reply.update(session=message.request_id, token=f"{message.request_id:032x}")
    router.send_multipart([peer, *protocol.encode(reply)])
"""


def test_a_killed_server_ends_every_frame_in_flight_in_exactly_one_event() -> None:
    process = subprocess.Popen([sys.executable, "-c", HOLDING_SERVER], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    client = AvatarClient(address=f"tcp://127.0.0.1:{process.stdout.readline().strip()}", timeout_s=0.5)
    try:
        kept, closed = client.open(avatar=0), client.open(avatar=1)
        assert [client.send_frame(kept, FRAME), client.send_frame(kept, FRAME), client.send_frame(closed, FRAME)] == [0, 1, 0]
        assert client.poll(timeout_ms=50) == []
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        with pytest.raises(ServerGoneError):
            events_until(client, lambda seen: False, timeout_s=5.0)  # only raising ends this
        client.close_session(closed)  # the user closes one of them now: none of its events may come
        events = client.poll()
        assert [(e.session, e.seq, e.code) for e in events] == [(kept, 0, SERVER_GONE), (kept, 1, SERVER_GONE)]
        assert all(isinstance(e, FrameError) for e in events) and client.poll() == []
        with pytest.raises(ServerGoneError):
            client.send_frame(kept, FRAME)  # the server is still gone: a send says so ...
        assert client.poll() == []  # ... and there was nothing left in flight to end
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_replies_that_arrive_after_a_reconnect_do_not_end_a_frame_twice() -> None:
    with FakeServer(frames="hold") as fake:
        client = AvatarClient(address=fake.address, timeout_s=2.0)
        session = client.open(avatar=0)
        assert [client.send_frame(session, FRAME), client.send_frame(session, FRAME)] == [0, 1]
        wait_until(lambda: fake.held() == 2)
        client.reconnect()  # the two frames end here, as server_gone ...
        fake.answer_held()  # ... and their textures come afterwards, on the new connection
        fake.frames = "texture"
        seq = client.send_frame(session, FRAME)
        events = events_until(client, lambda seen: any(isinstance(e, Texture) for e in seen))
        events += client.poll(timeout_ms=100)
        assert [(type(e), e.seq) for e in events] == [(FrameError, 0), (FrameError, 1), (Texture, seq)]
        assert {e.code for e in events if isinstance(e, FrameError)} == {SERVER_GONE}
        tokens = [header["token"] for header in fake.frame_headers]
        assert tokens == [f"{1:032x}", f"{1:032x}", f"{2:032x}"]  # the reopened session's own token
        client.close()


def test_a_closed_client_reports_nothing_for_its_closed_sessions() -> None:
    with FakeServer(frames="hold") as fake:
        client = AvatarClient(address=fake.address, timeout_s=0.5)
        session = client.open(avatar=0)
        client.send_frame(session, FRAME)
        client.close()
        assert client.poll() == [] and not client.connected


# ------------------------------------------------------------------------------------------------
# CURVE


def curve_client(
    files: CurveFiles, address: str, *, server_key: Path | None = None, client_key: Path | None = None, timeout_s: float = 3.0
) -> AvatarClient:
    keys = load_curve_client_keys(server_public_key=server_key or files.server_public, client_secret_key=client_key or files.client_secret)
    return AvatarClient(address=address, timeout_s=timeout_s, curve=keys)


def test_a_curve_client_streams_from_a_curve_server(curve_server: AvatarService, curve_files: CurveFiles) -> None:
    client = curve_client(curve_files, curve_server.bound_address)
    try:
        info = client.hello()
        assert info.capabilities.get("curve") is True
        monitor = client._monitor
        session = client.open(avatar=0)
        client.send_frame(session, FRAME)
        texture = next(e for e in events_until(client, lambda seen: bool(seen)) if isinstance(e, Texture))
        assert texture.buffer.shape == (32, 32, 4)
        public, _ = zmq.auth.load_certificate(curve_files.client_public)
        assert client.stats()["client"]["curve_key"] == public.decode()
    finally:
        client.close()
    assert monitor is not None and monitor.closed and client._monitor is None  # the monitor goes with the socket


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong server key", "refused this client's CURVE handshake: check the server's public key"),
        ("client not allowed", "refused this client's CURVE key"),
        ("no CURVE", "(requires|may require) CURVE"),  # the latter when the server hangs up before saying why
    ],
)
def test_a_refused_handshake_is_one_clear_line_within_the_timeout(
    curve_server: AvatarService, curve_files: CurveFiles, case: str, message: str
) -> None:
    timeout_s = 3.0
    if case == "wrong server key":
        client = curve_client(curve_files, curve_server.bound_address, server_key=curve_files.stranger_public, timeout_s=timeout_s)
    elif case == "client not allowed":
        client = curve_client(curve_files, curve_server.bound_address, client_key=curve_files.stranger_secret, timeout_s=timeout_s)
    else:
        client = AvatarClient(address=curve_server.bound_address, timeout_s=timeout_s)
    began = time.monotonic()
    with pytest.raises(ServerGoneError) as raised:
        client.hello()
    assert time.monotonic() - began < timeout_s  # noticed on the handshake, not by the timeout
    text = str(raised.value)
    assert re.search(message, text) and curve_server.bound_address in text and len(text.splitlines()) == 1
    assert not client.connected and client._monitor is None
    client.close()


def test_no_reply_from_a_curve_server_hints_at_its_public_key(curve_files: CurveFiles) -> None:
    """A CURVE peer that completes the handshake (no allow-list) and never answers: the timeout names the key."""
    context = zmq.Context()  # no authenticator in this context: the handshake completes for any client key
    server_secret = zmq.auth.load_certificate(curve_files.server_secret)[1]
    fake = FakeServer(frames="hold", context=context, curve_secret=server_secret)
    fake._answer = lambda peer, message: None  # hello is never answered
    client = curve_client(curve_files, fake.address, timeout_s=0.5)
    try:
        with pytest.raises(ServerGoneError, match="check the server's public key"):
            client.hello()
    finally:
        client.close()
        fake.stop()
        context.term()


def test_key_files_load_or_say_in_one_line_which_file_is_wrong(curve_files: CurveFiles, tmp_path: Path) -> None:
    keys = load_curve_client_keys(server_public_key=curve_files.server_public, client_secret_key=curve_files.client_secret)
    assert keys.server_public == zmq.auth.load_certificate(curve_files.server_public)[0]
    assert (keys.public, keys.secret) == zmq.auth.load_certificate(curve_files.client_secret)
    assert keys.secret.decode() not in repr(keys)
    # The server's .key_secret holds its public key too.
    assert (
        load_curve_client_keys(server_public_key=curve_files.server_secret, client_secret_key=curve_files.client_secret).server_public
        == keys.server_public
    )

    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("just some text\n")
    short = tmp_path / "short.key"
    short.write_text('metadata\ncurve\n    public-key = "tooshort"\n')
    bad_cases = [
        (dict(server_public_key=tmp_path / "missing.key"), "missing.key: no such file"),
        (dict(server_public_key=tmp_path), "not a file"),
        (dict(server_public_key=not_a_key), "notes.txt: not a CURVE certificate"),
        (dict(server_public_key=short), "short.key: its public key is not 40 Z85 characters"),
        (dict(client_secret_key=curve_files.client_public), "client.key: it holds no secret key"),
    ]
    for override, message in bad_cases:
        paths = {"server_public_key": curve_files.server_public, "client_secret_key": curve_files.client_secret, **override}
        with pytest.raises(CurveKeyError) as raised:
            load_curve_client_keys(**paths)
        assert message in str(raised.value) and len(str(raised.value).splitlines()) == 1
    assert issubclass(CurveKeyError, ValueError)
    with pytest.raises(CurveKeyError, match="40 Z85"):
        CurveClientKeys(server_public=b"x" * 39, public=keys.public, secret=keys.secret)
