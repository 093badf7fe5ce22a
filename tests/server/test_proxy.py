"""`megalive proxy` on loopback with real servers behind it: sessions spread over the backends and stick to theirs,
a backend that dies or stops answering costs its sessions one unknown_session each and they reopen on another,
backends that never answer hold nothing up, CURVE on both sides, and the command's options."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from client.client import AvatarClient, FrameError, ServerError, ServerGoneError, Texture, load_curve_client_keys
from megalive.cli import main as megalive_main
from server import imaging
from server.engine import Engine
from server.proxy import AvatarProxy, BackendLink, ProxyConfig
from server.service import AvatarService, ServiceConfig
from tests.client.test_client import curve_client, curve_service, make_curve_files

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engines(contract_model_path: Path) -> list[Engine]:
    return [Engine(model_path=contract_model_path, max_batch=4) for _ in range(2)]


@pytest.fixture
def backends(engines: list[Engine]) -> Iterator[list[AvatarService]]:
    services = [AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*", max_batch=4)) for engine in engines]
    for service in services:
        service.start()
    yield services
    for service in services:
        service.stop()


@contextlib.contextmanager
def running_proxy(addresses: list[str], *, wait_up: list[str] | None = None, **options) -> Iterator[AvatarProxy]:
    """A proxy on a free loopback port in front of ``addresses``; waits until those in ``wait_up`` (default: all) are up.

    A long probe timeout unless a test says otherwise: on a loaded box a live backend must never look hung (a killed one
    is seen by its closed connection, not by the timeout)."""
    options = {"probe_interval_s": 0.2, "probe_timeout_s": 10.0, **options}
    config = ProxyConfig(backends=tuple(BackendLink(address=a) for a in addresses), bind="tcp://127.0.0.1:*", **options)
    proxy = AvatarProxy(config=config)
    proxy.start()
    try:
        wait_until(lambda: all(s.state == "up" for s in proxy.backend_states() if s.address in (addresses if wait_up is None else wait_up)))
        yield proxy
    finally:
        proxy.stop()
        assert not proxy.is_running()


def wait_until(condition, *, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def driver_frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def render_round(client: AvatarClient, sessions: list[int], seed: int) -> dict[int, Texture]:
    """One frame on each of ``sessions``; waits for their textures (any other event of theirs fails the test; late
    events of the client's other sessions are let go)."""
    for session in sessions:
        assert client.send_frame(session, driver_frame(seed + session)) is not None
    textures: dict[int, Texture] = {}
    deadline = time.monotonic() + 10
    while len(textures) < len(sessions):
        assert time.monotonic() < deadline, f"textures of {sorted(textures)} only"
        for event in client.poll(timeout_ms=20):
            if event.session in sessions:
                assert isinstance(event, Texture), event
                textures[event.session] = event
    return textures


def stream_until_reopened(client: AvatarClient, moving: int, steady: list[int], *, textures_after: int = 3) -> tuple[list, list]:
    """Stream on ``moving`` and ``steady`` until ``moving`` has had an error and then ``textures_after`` textures.
    Returns (the events of moving, those of steady)."""
    moved: list = []
    kept: list = []
    deadline = time.monotonic() + 30

    def reopened() -> bool:
        first_error = next((i for i, e in enumerate(moved) if isinstance(e, FrameError)), None)
        return first_error is not None and sum(isinstance(e, Texture) for e in moved[first_error:]) >= textures_after

    while not reopened():
        assert time.monotonic() < deadline, f"the moving session saw {moved}"
        for session in [moving, *steady]:
            if client.can_send(session):
                client.send_frame(session, driver_frame(session))
        for event in client.poll(timeout_ms=20):
            (moved if event.session == moving else kept).append(event)
    return moved, kept


def session_counters(service: AvatarService) -> list[tuple[int, int]]:
    """(avatar, frames received) of every session the backend holds."""
    return sorted((s.avatar, s.counters.received) for s in service.sessions.values())


# ------------------------------------------------------------------------------------------------
# Spread and stickiness


def test_sessions_spread_over_the_backends_and_each_sticks_to_its_own(backends: list[AvatarService], engines: list[Engine]) -> None:
    with running_proxy([b.bound_address for b in backends]) as proxy:
        first = AvatarClient(address=proxy.bound_address, max_in_flight=1, timeout_s=10)
        second = AvatarClient(address=proxy.bound_address, max_in_flight=1, timeout_s=10)
        first_sessions = [first.open(avatar=0), first.open(avatar=1)]
        second_sessions = [second.open(avatar=2), second.open(avatar=2)]
        # Spread: each new session went to the backend with fewer, so two each.
        assert [len(b.sessions) for b in backends] == [2, 2]
        rounds = 6
        for seed in range(rounds):
            textures = render_round(first, first_sessions, seed)
            render_round(second, second_sessions, seed)
        # Stickiness, seen by each backend: every session it holds received all of its session's frames.
        for backend in backends:
            assert [received for _, received in session_counters(backend)] == [rounds, rounds]
            with AvatarClient(address=backend.bound_address) as direct:
                assert direct.stats()["other_clients"] == {"sessions": 2, "received": 12, "rendered": 12, "dropped": 0, "errors": 0}

        # The proxy's stats: this client's sessions under the ids it knows, sums, and each backend's own figures.
        stats = first.stats()
        own = {s["session"]: s for s in stats["sessions"]}
        assert sorted(own) == sorted(state.server_id for state in first._sessions.values())
        assert all(s["received"] == rounds and s["rendered"] == rounds for s in own.values())
        assert len({s["backend"] for s in own.values()}) == 2  # this client's two sessions are on different backends
        assert stats["other_clients"]["sessions"] == 2 and stats["other_clients"]["received"] == 2 * rounds
        assert stats["engine"]["frames"] == 4 * rounds and stats["engine"]["backends"] == 2
        listed = stats["server"]["backends"]
        assert [(b["address"], b["state"], b["sessions"]) for b in listed] == [(b.bound_address, "up", 2) for b in backends]
        assert [b["engine"]["frames"] for b in listed] == [b.engine.counters.frames for b in backends]

        # The texture came through intact: it equals the engine's output for that frame (run after the counts above).
        frame = driver_frame(rounds - 1 + first_sessions[1])
        output = engines[0].run(imaging.to_engine_batch([frame]), np.array([1]))
        expected = imaging.to_texture_pixels(output.rgb, output.alpha)[0]
        assert np.abs(textures[first_sessions[1]].buffer.array().astype(int) - expected.astype(int)).max() <= 1

        # A session belongs to the client that opened it, through the proxy too.
        (state,) = [s for s in first._sessions.values() if s.server_id == min(own)]
        with pytest.raises(ServerError) as raised:
            second._request({"op": "close", "session": state.server_id, "token": state.token})
        assert raised.value.code == "unknown_session"
        first.close()
        second.close()
        # Closing through the proxy closes on the backend.
        wait_until(lambda: sum(len(b.sessions) for b in backends) == 0)


# ------------------------------------------------------------------------------------------------
# A backend that dies, one that stops answering, and ones that never answer


def test_a_killed_backend_costs_each_session_one_unknown_session_then_it_streams_on_another(backends: list[AvatarService]) -> None:
    with running_proxy([b.bound_address for b in backends]) as proxy:
        client = AvatarClient(address=proxy.bound_address, max_in_flight=1, timeout_s=10)
        moving, steady = client.open(avatar=0), client.open(avatar=1)
        render_round(client, [moving, steady], 0)
        dying = next(b for b in backends if any(s.avatar == 0 for s in b.sessions.values()))
        survivor = next(b for b in backends if b is not dying)
        client.send_frame(moving, driver_frame(1))  # in flight while its backend goes
        dying.stop()  # its sockets close as a killed process's do
        moved, kept = stream_until_reopened(client, moving, [steady])
        errors = [e for e in moved if isinstance(e, FrameError)]
        assert [e.code for e in errors] == ["unknown_session"]  # once, then the session reopened
        assert "is down" in errors[0].message or "no session" in errors[0].message
        assert all(isinstance(e, Texture) for e in kept)  # the other session never noticed
        assert sorted(avatar for avatar, _ in session_counters(survivor)) == [0, 1]
        assert min(received for _, received in session_counters(survivor)) >= 3
        assert proxy.counters.failed_over_sessions == 1 and proxy.counters.backend_failures == 1
        states = {s.address: s for s in proxy.backend_states()}
        assert states[dying.bound_address].state == "down" and states[survivor.bound_address].sessions == 2
        listed = {b["address"]: b for b in client.stats()["server"]["backends"]}
        assert listed[dying.bound_address]["state"] == "down" and not listed[dying.bound_address]["answered"]

        # The server comes back on its address: it is up again and, holding the fewest, gets the next session.
        back = AvatarService(engine=dying.engine, config=ServiceConfig(bind=dying.bound_address, max_batch=4))
        back.start()
        try:
            wait_until(lambda: all(s.state == "up" for s in proxy.backend_states()))
            render_round(client, [client.open(avatar=2)], 0)
            assert session_counters(back) == [(2, 1)]
            client.close()
        finally:
            back.stop()


@pytest.fixture
def serve_process(contract_model_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real `megalive serve` process (it can be stopped with SIGSTOP: a server that hangs)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "megalive", "serve", "--model", str(contract_model_path), "--bind", "tcp://127.0.0.1:*", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        line = process.stdout.readline()
        assert "serving contract" in line, line
        yield process, line.strip().rsplit(" on ", 1)[1]
    finally:
        process.kill()  # SIGKILL ends a stopped process too
        process.communicate(timeout=30)


def test_a_backend_that_stops_answering_mid_stream_is_found_and_its_sessions_move(
    backends: list[AvatarService], serve_process: tuple[subprocess.Popen, str]
) -> None:
    process, hung_address = serve_process
    survivor = backends[0]
    with running_proxy([hung_address, survivor.bound_address], probe_timeout_s=2.5) as proxy:
        client = AvatarClient(address=proxy.bound_address, max_in_flight=1, timeout_s=20)
        sessions = [client.open(avatar=0), client.open(avatar=1)]
        render_round(client, sessions, 0)
        (kept_avatar,) = [s.avatar for s in survivor.sessions.values()]
        moving = sessions[1 - kept_avatar]  # the session on the process (avatars 0 and 1 opened in that order)
        os.kill(process.pid, signal.SIGSTOP)  # the process stays, its connections stay open, nothing answers
        stopped_at = time.monotonic()
        moved, kept = stream_until_reopened(client, moving, [sessions[kept_avatar]])
        print(f"a hung backend's session reopened {time.monotonic() - stopped_at:.2f} s after SIGSTOP (probe timeout 2.5 s)")
        assert [e.code for e in moved if isinstance(e, FrameError)] == ["unknown_session"]
        assert all(isinstance(e, Texture) for e in kept)
        (hung,) = [s for s in proxy.backend_states() if s.address == hung_address]
        assert hung.state == "down" and "no answer to hello" in hung.why
        assert sorted(avatar for avatar, _ in session_counters(survivor)) == [0, 1]
        client.close()


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """A peer that accepts connections and never answers (a process stuck before its loop). Not our server."""
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    yield f"tcp://127.0.0.1:{port}"
    socket.close()


@pytest.fixture
def dead_address() -> str:
    """A loopback port where nothing listens."""
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    socket.close(linger=0)
    return f"tcp://127.0.0.1:{port}"


def test_backends_that_never_answer_are_said_and_hold_nothing_up(
    backends: list[AvatarService], silent_peer: str, dead_address: str
) -> None:
    live = backends[0].bound_address
    options = {"probe_interval_s": 0.1, "probe_timeout_s": 1.0}
    with running_proxy([silent_peer, dead_address, live], wait_up=[live], **options) as proxy:
        client = AvatarClient(address=proxy.bound_address, max_in_flight=1, timeout_s=5)
        assert client.hello().server.startswith("megalive")
        sessions = [client.open(avatar=a) for a in range(3)]
        assert len(backends[0].sessions) == 3  # only a backend that answers gets sessions
        render_round(client, sessions, 0)
        wait_until(lambda: sum(s.state == "down" for s in proxy.backend_states()) == 2)
        listed = {b["address"]: b for b in client.stats()["server"]["backends"]}
        assert "no answer to hello" in listed[silent_peer]["why"]
        assert listed[dead_address]["state"] == "down" and listed[dead_address]["why"]
        assert listed[live]["state"] == "up" and listed[live]["sessions"] == 3
        client.close()

    with running_proxy([silent_peer, dead_address], wait_up=[], **options) as proxy:
        client = AvatarClient(address=proxy.bound_address, timeout_s=5)
        for request in (client.hello, lambda: client.open(avatar=0)):
            with pytest.raises(ServerError) as raised:
                request()
            assert raised.value.code == "busy" and "no backend answers" in raised.value.message
        stats = client.stats()  # answered by the proxy alone, not held up by its backends
        assert [b["answered"] for b in stats["server"]["backends"]] == [False, False] and stats["sessions"] == []
        client.close()


@pytest.fixture
def hangs_at_first_open() -> Iterator[str]:
    """A stand-in peer that answers hello as a v1 server does until its first `open`, then answers nothing (a server that
    hangs on a request). Not our server: a hang on demand cannot be staged with the real one in-process."""
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def answer_until_open() -> None:
        hung = False
        while not stop.is_set():
            if not socket.poll(20):
                continue
            peer, header, *_ = socket.recv_multipart()
            request = msgpack.unpackb(header)
            hung = hung or request.get("op") == "open"
            if not hung and request.get("op") == "hello":
                reply = {"v": 1, "op": "hello", "id": request.get("id"), "server": "stand-in", "protocol": 1, "models": []}
                socket.send_multipart([peer, msgpack.packb(reply)])

    thread = threading.Thread(target=answer_until_open, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{port}"
    stop.set()
    thread.join()
    socket.close()


def test_an_open_that_a_hanging_backend_holds_is_sent_to_another(backends: list[AvatarService], hangs_at_first_open: str) -> None:
    live = backends[0]
    with running_proxy([hangs_at_first_open, live.bound_address], probe_interval_s=0.1, probe_timeout_s=1.0) as proxy:
        client = AvatarClient(address=proxy.bound_address, max_in_flight=1, timeout_s=10)
        sessions = [client.open(avatar=0), client.open(avatar=1)]  # one of them first went to the stand-in, which hung
        assert proxy.counters.resent == 1
        assert sorted(avatar for avatar, _ in session_counters(live)) == [0, 1]
        render_round(client, sessions, 0)
        (hung,) = [s for s in proxy.backend_states() if s.address == hangs_at_first_open]
        assert hung.state == "down" and "no answer to hello" in hung.why
        client.close()


def test_requests_only_the_proxy_can_answer(backends: list[AvatarService]) -> None:
    with running_proxy([b.bound_address for b in backends]) as proxy:
        with AvatarClient(address=proxy.bound_address) as client:
            info = client.hello()
            assert info.capabilities["enroll"]["available"] is False
            with pytest.raises(ServerError) as raised:
                client._request({"op": "enroll", "name": "x", "consent": "yes"})
            assert raised.value.code == "bad_request" and "enroll" in raised.value.message
            with pytest.raises(ServerError) as raised:
                client._request({"op": "frame", "session": 999, "seq": 0})
            assert raised.value.code == "unknown_session"
            assert [a.name for a in client.avatars()] == ["ada", "bo", "cy"]


# ------------------------------------------------------------------------------------------------
# CURVE and the command


def test_curve_in_front_and_towards_the_backends(engines: list[Engine], tmp_path: Path) -> None:
    files = make_curve_files(tmp_path / "keys")
    backend = curve_service(engines[0], files)  # allows the key pair the proxy uses
    backend.start()
    from server.keys import load_server_keys

    link = BackendLink(
        address=backend.bound_address,
        curve=load_curve_client_keys(server_public_key=files.server_public, client_secret_key=files.client_secret),
    )
    front = load_server_keys(secret_file=files.server_secret, allow_dir=files.allow_dir)
    proxy = AvatarProxy(config=ProxyConfig(backends=(link,), bind="tcp://127.0.0.1:*", curve=front, probe_interval_s=0.2))
    proxy.start()
    try:
        wait_until(lambda: proxy.backend_states()[0].state == "up")
        client = curve_client(files, proxy.bound_address, timeout_s=10)
        session = client.open(avatar=0)
        assert render_round(client, [session], 0)[session].buffer.shape == (32, 32, 4)
        public, _ = zmq.auth.load_certificate(files.client_public)
        assert client.stats()["client"]["curve_key"] == public.decode()
        client.close()
        stranger = curve_client(files, proxy.bound_address, client_key=files.stranger_secret, timeout_s=3)
        with pytest.raises(ServerGoneError, match="refused this client's CURVE key"):
            stranger.hello()
        stranger.close()
    finally:
        proxy.stop()
        backend.stop()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give at least one --backend"),
        (["--backend", "tcp://10.1.2.3:5555"], "is on another host"),
        (["--backend", "tcp://127.0.0.1:1", "--bind", "tcp://0.0.0.0:5555"], "refusing to bind"),
        (["--backend", "tcp://127.0.0.1:1", "--backend", "tcp://127.0.0.1:1"], "listed twice"),
        (["--backend", "tcp://127.0.0.1:1", "--probe-interval", "2", "--probe-timeout", "1"], "--probe-timeout"),
        (["--backend", "tcp://127.0.0.1:1", "--backend-key", "a.key"], "go together"),
        (["--backend", "udp://127.0.0.1:1"], "not a ZeroMQ address"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert megalive_main(["proxy", *arguments]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("megalive proxy: ") and message in err[0]


def test_the_command_relays_and_stops_cleanly(backends: list[AvatarService], capsys: pytest.CaptureFixture[str]) -> None:
    addresses = [b.bound_address for b in backends]
    assert megalive_main(["proxy", "--dry-run", *(x for a in addresses for x in ("--backend", a))]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [b["address"] for b in shown["backends"]] == addresses and shown["bind"] == "tcp://127.0.0.1:5555"

    command = [sys.executable, "-m", "megalive", "proxy", "--bind", "tcp://127.0.0.1:*", *(x for a in addresses for x in ("--backend", a))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        line = process.stdout.readline()
        assert "proxy on tcp://127.0.0.1:" in line, line + process.stderr.read()
        address = line.split(" proxy on ", 1)[1].split(" ", 1)[0]
        with AvatarClient(address=address, timeout_s=10) as client:
            session = client.open(avatar=2)
            assert render_round(client, [session], 0)[session].buffer.shape == (32, 32, 4)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "stopped" in out
