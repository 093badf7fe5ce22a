"""The Live Link relay: payload layout, the server's refusal of `arkit` (real server on loopback),
replay of a recorded take to a UDP receiver, and the relay's local safeguards: loopback by default,
one receiver per UDP port, a size cap on takes, CURVE key files.

Ports are never picked and bound later (another process can take one in between): servers bind
`tcp://127.0.0.1:*` and UDP receivers port 0, and the tests read the bound port back."""

from __future__ import annotations

import argparse
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from unreal_bridge.cli import add_livelink_commands, add_unreal_commands
from unreal_bridge.livelink.packet import ARKIT_BLENDSHAPES, CURVE_NAMES, FaceFrame, FrameTime, encode_packet
from unreal_bridge.livelink.receiver import LiveLinkFaceReceiver
from unreal_bridge.livelink.take import TakeWriter, read_take
from unreal_bridge.relay import EXIT_REFUSED, EXIT_SERVER_GONE, RelayConfig, curves_payload, run_relay


def megalive(argv: list[str]) -> int:
    """What `megalive ...` does once megalive/cli.py registers the bridge's commands."""
    parser = argparse.ArgumentParser(prog="megalive")
    commands = parser.add_subparsers()
    add_livelink_commands(commands)
    add_unreal_commands(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def face_frame(subject: str = "iPhone", offset: float = 0.0) -> FaceFrame:
    values = tuple(offset + index / 64.0 for index in range(len(CURVE_NAMES)))  # all exact in float32
    return FaceFrame(device_id="dev", subject=subject, time=FrameTime(1, 0.0, 60, 1), values=values)


def listening_port(out: io.StringIO, *, timeout_s: float = 20.0) -> int:
    """The UDP port a relay started with port 0 bound, read from its "listening on" line."""
    deadline = time.monotonic() + timeout_s
    while (match := re.search(r"listening on UDP \S+:(\d+) ", out.getvalue())) is None:
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.01)
    return int(match.group(1))


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server address nobody answers on, without a race: a ROUTER bound to a port the kernel picks,
    held open (so no other process can take the port) and never read."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    try:
        yield sock.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        sock.close()


@pytest.fixture
def service(contract_model_path: Path):
    service = AvatarService(engine=Engine(model_path=contract_model_path), config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    service.start()
    yield service
    service.stop()


def test_payload_is_61_little_endian_floats_in_live_link_order() -> None:
    frame = face_frame()
    payload = curves_payload(frame)
    assert payload.dtype == "<f4" and payload.shape == (61,) and len(payload.data) == 61 * 4
    values = np.frombuffer(payload.data, dtype="<f4")
    assert values.tolist() == list(frame.values)
    assert values[CURVE_NAMES.index("jawOpen")] == frame.curves["jawOpen"] and CURVE_NAMES.index("jawOpen") == 17
    assert values[len(ARKIT_BLENDSHAPES)] == frame.curves["headYaw"]  # rotations follow the 52 blendshapes
    assert values[-1] == frame.curves["rightEyeRoll"]


def test_relay_gets_the_servers_refusal_and_exits_non_zero_with_one_clear_line(service: AvatarService) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run_relay(RelayConfig(server=service.bound_address, port=0, timeout_s=5.0), out=out, err=err)
    assert code == EXIT_REFUSED != 0
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("megalive livelink relay: the loaded model has no ARKit input: ")
    assert "'arkit'" in lines[0] and out.getvalue() == ""


def test_relay_command_line_exits_non_zero_on_refusal(service: AvatarService, capsys: pytest.CaptureFixture[str]) -> None:
    assert megalive(["livelink", "relay", "--server", service.bound_address, "--port", "0"]) == EXIT_REFUSED
    assert "the loaded model has no ARKit input" in capsys.readouterr().err


def test_relay_reports_a_missing_server(silent_server: str) -> None:
    err = io.StringIO()
    code = run_relay(RelayConfig(server=silent_server, port=0, timeout_s=0.3), out=io.StringIO(), err=err)
    assert code == EXIT_SERVER_GONE and "server gone" in err.getvalue()


def test_dry_run_prints_the_resolved_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert megalive(["livelink", "relay", "--avatar", "2", "--size", "64x48", "--dry-run"]) == 0
    options = json.loads(capsys.readouterr().out)
    assert options["avatar"] == 2 and options["output_size"] == [64, 48] and options["port"] == 11111
    assert megalive(["livelink", "replay", "take.llf", "--to", "10.0.0.2:9000", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["to"] == ["10.0.0.2", 9000]


def test_replay_command_sends_a_recorded_take_to_a_udp_receiver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    take = tmp_path / "take.llf"
    frames = [face_frame(offset=float(n)) for n in range(3)]
    with TakeWriter(take) as writer:
        for index, frame in enumerate(frames):
            writer.write(encode_packet(frame), received_at=index / 60)
    with LiveLinkFaceReceiver(bind_address="127.0.0.1", port=0) as receiver:
        assert megalive(["livelink", "replay", str(take), "--to", f"127.0.0.1:{receiver.port}", "--speed", "inf"]) == 0
        deadline = time.monotonic() + 5
        while receiver.stats().accepted < 3 and time.monotonic() < deadline:
            receiver.poll()
            time.sleep(0.01)
        assert receiver.stats().accepted == 3
        assert receiver.latest("iPhone") == frames[-1]
    assert "sent 3 packets" in capsys.readouterr().out


def start_relay_loop(
    config: RelayConfig, client, session: int, stop: threading.Event, out: io.StringIO, err: io.StringIO, *, receiver, writer
) -> tuple[threading.Thread, list[int]]:
    """The relay's loop on a thread; the list gets its exit status when it ends."""
    from unreal_bridge.relay import _relay_loop

    result: list[int] = []
    loop = threading.Thread(
        target=lambda: result.append(_relay_loop(config, client, session, stop, out, err, receiver=receiver, writer=writer))
    )
    loop.start()
    return loop, result


def test_relay_loop_forwards_new_frames_records_the_take_and_stops_on_request(service: AvatarService, tmp_path: Path) -> None:
    """The loop itself, on an `image` session: the server answers each forwarded 61-float frame with a
    bad_request error, which the relay counts without stopping."""
    from client.client import AvatarClient
    from unreal_bridge.relay import bind_receiver, open_take

    config = RelayConfig(server=service.bound_address, port=0, record=tmp_path / "take.llf", progress_interval_s=0.2)
    receiver, writer = bind_receiver(config), open_take(config)
    port = receiver.port
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    with AvatarClient(address=service.bound_address, timeout_s=5.0) as client:
        session = client.open(avatar=0, driver="image")
        loop, result = start_relay_loop(config, client, session, stop, out, err, receiver=receiver, writer=writer)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            deadline = time.monotonic() + 10
            while "errors 0" in out.getvalue() or "errors" not in out.getvalue():
                assert time.monotonic() < deadline, out.getvalue()
                sender.sendto(encode_packet(face_frame(offset=time.monotonic() % 1)), ("127.0.0.1", port))
                time.sleep(0.02)
        finally:
            sender.close()
            stop.set()
            loop.join(timeout=10)
    assert result == [0]
    assert "forwarded" in out.getvalue() and "stopped after forwarding" in out.getvalue()
    assert len(list(read_take(tmp_path / "take.llf"))) >= 1


def test_relay_drives_an_avatar_model_with_an_arkit_input(multi_driver_model_path: Path) -> None:
    """Live Link Face packets in, textures rendered by the model's ARKit graph out (no errors)."""
    arkit_service = AvatarService(engine=Engine(model_path=multi_driver_model_path), config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    arkit_service.start()
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    result: list[int] = []
    config = RelayConfig(server=arkit_service.bound_address, avatar=1, port=0, progress_interval_s=0.2)
    relay = threading.Thread(target=lambda: result.append(run_relay(config, stop=stop, out=out, err=err)))
    relay.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        port = listening_port(out)
        deadline = time.monotonic() + 20
        while not any(line.startswith("forwarded") and "rendered 0 " not in line for line in out.getvalue().splitlines()):
            assert time.monotonic() < deadline, (out.getvalue(), err.getvalue())
            sender.sendto(encode_packet(face_frame(offset=(time.monotonic() % 1) * 0.1)), ("127.0.0.1", port))  # curves stay in [0, 1]
            time.sleep(0.02)
    finally:
        sender.close()
        stop.set()
        relay.join(timeout=10)
        arkit_service.stop()
    assert result == [0] and err.getvalue() == ""
    assert "arkit session open" in out.getvalue() and "errors 0" in out.getvalue()


# ---------------------------------------------------------------------------------------------
# Local safeguards: loopback by default, one receiver per port, capped takes, CURVE key files
# ---------------------------------------------------------------------------------------------


def test_relay_listens_on_loopback_unless_told(capsys: pytest.CaptureFixture[str]) -> None:
    """A relay on every interface would take curves from anyone on the network; the LAN is opt-in."""
    from unreal_bridge.relay import bind_receiver

    assert RelayConfig().listen == "127.0.0.1"
    assert megalive(["livelink", "relay", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["listen"] == "127.0.0.1"
    assert megalive(["livelink", "relay", "--listen", "0.0.0.0", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["listen"] == "0.0.0.0"
    with pytest.raises(SystemExit):
        megalive(["livelink", "relay", "--help"])
    assert "--listen 0.0.0.0" in " ".join(capsys.readouterr().out.split())  # the help says what a phone needs
    with bind_receiver(RelayConfig(port=0)) as receiver:
        with socket.socket(fileno=socket.dup(receiver.fileno())) as view:
            assert view.getsockname()[0] == "127.0.0.1"


def test_second_relay_on_a_port_fails_at_once_with_one_line(silent_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Two relays on one UDP port used to both bind (SO_REUSEADDR) and one got nothing; now the second
    stops before it contacts the server (a silent one here: it would wait out --timeout)."""
    with LiveLinkFaceReceiver(port=0) as first:
        started = time.monotonic()
        code = megalive(["livelink", "relay", "--server", silent_server, "--port", str(first.port), "--timeout", "5"])
        elapsed = time.monotonic() - started
        captured = capsys.readouterr()
        assert code == 2 and elapsed < 2.5
        lines = captured.err.splitlines()
        assert len(lines) == 1 and captured.out == ""
        assert lines[0].startswith(f"megalive livelink relay: UDP port {first.port} is already in use")
        # The first receiver still gets the packets.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(encode_packet(face_frame()), ("127.0.0.1", first.port))
        deadline = time.monotonic() + 5
        while first.latest() is None:
            assert time.monotonic() < deadline
            first.poll()
            time.sleep(0.005)


def test_relay_that_cannot_start_leaves_no_take(silent_server: str, tmp_path: Path) -> None:
    """A take is opened before the server is contacted (a bad path fails at once); a relay that never
    relayed removes its empty take, and a take in progress elsewhere is never overwritten."""
    take = tmp_path / "take.llf"
    err = io.StringIO()
    assert run_relay(RelayConfig(server=silent_server, port=0, timeout_s=0.3, record=take), out=io.StringIO(), err=err) == EXIT_SERVER_GONE
    assert list(tmp_path.iterdir()) == []
    interrupted = TakeWriter(take)
    interrupted.write(b"kept", 0.0)
    interrupted.abandon()  # what a killed recording leaves
    before = interrupted.partial_path.read_bytes()
    err = io.StringIO()
    assert run_relay(RelayConfig(server=silent_server, port=0, timeout_s=5.0, record=take), out=io.StringIO(), err=err) == 2
    assert err.getvalue().startswith(f"megalive livelink relay: cannot record to {take}: ") and len(err.getvalue().splitlines()) == 1
    assert interrupted.partial_path.read_bytes() == before and not take.exists()


def test_record_max_mb_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert megalive(["livelink", "relay", "--record", "t.llf", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["record_max_bytes"] == 256_000_000
    assert megalive(["livelink", "relay", "--record", "t.llf", "--record-max-mb", "0.5", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["record_max_bytes"] == 500_000
    for bad in ("0", "-1", "nan", "inf", "lots"):
        with pytest.raises(SystemExit) as exit_info:
            megalive(["livelink", "relay", "--record-max-mb", bad, "--dry-run"])
        assert exit_info.value.code == 2
    assert "--record-max-mb" in capsys.readouterr().err


def test_recording_stops_at_its_cap_says_so_once_and_relaying_goes_on(service: AvatarService, tmp_path: Path) -> None:
    """A UDP flood used to grow a take without bound (309 MB in 5 s). Now the take is finished at the
    cap (renamed into place at once), one line says so, later packets are counted, frames keep flowing."""
    from client.client import AvatarClient
    from unreal_bridge.relay import bind_receiver, open_take

    packet_size = len(encode_packet(face_frame()))
    cap = 20 + 10 * (12 + packet_size) + 5  # the header and 10 records fit, an 11th does not
    take = tmp_path / "take.llf"
    config = RelayConfig(server=service.bound_address, port=0, record=take, record_max_bytes=cap, progress_interval_s=0.1)
    receiver, writer = bind_receiver(config), open_take(config)
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    with AvatarClient(address=service.bound_address, timeout_s=5.0) as client:
        session = client.open(avatar=0, driver="image")
        loop, result = start_relay_loop(config, client, session, stop, out, err, receiver=receiver, writer=writer)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def forwarded() -> int:
            counts = re.findall(r"^forwarded (\d+) ", out.getvalue(), flags=re.MULTILINE)
            return int(counts[-1]) if counts else 0

        try:
            deadline = time.monotonic() + 20
            while "recording stopped" not in err.getvalue():
                assert time.monotonic() < deadline, (out.getvalue(), err.getvalue())
                for _ in range(5):
                    sender.sendto(encode_packet(face_frame(offset=time.monotonic() % 1)), ("127.0.0.1", receiver.port))
                time.sleep(0.005)
            assert take.exists() and take.stat().st_size <= cap  # finished as soon as the cap was reached
            at_cap = forwarded()
            while forwarded() <= at_cap + 3 or "unrecorded" not in out.getvalue():
                assert time.monotonic() < deadline, (out.getvalue(), err.getvalue())
                sender.sendto(encode_packet(face_frame(offset=time.monotonic() % 1)), ("127.0.0.1", receiver.port))
                time.sleep(0.01)
        finally:
            sender.close()
            stop.set()
            loop.join(timeout=10)
    assert result == [0]
    cap_lines = [line for line in err.getvalue().splitlines() if "recording stopped" in line]
    assert len(cap_lines) == 1 and "--record-max-mb" in cap_lines[0] and "still relaying" in cap_lines[0]
    assert take.stat().st_size <= cap and not writer.partial_path.exists()
    assert len(list(read_take(take, strict=True))) == 10 == writer.records
    final = re.search(r"recorded 10 packets to \S+ \(size cap reached; (\d+) later packets not recorded\)", out.getvalue())
    assert final is not None and int(final.group(1)) > 0


def test_server_and_client_keys_go_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert megalive(["livelink", "relay", "--server-key", "s.key", "--client-key", "c.key_secret", "--dry-run"]) == 0
    options = json.loads(capsys.readouterr().out)
    assert (options["server_key"], options["client_key"]) == ("s.key", "c.key_secret")
    assert megalive(["livelink", "relay", "--server-key", str(tmp_path / "s.key"), "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "--server-key and --client-key go together" in captured.err


def _curve_client_support() -> None:
    if not zmq.has("curve"):
        pytest.skip("this libzmq has no CURVE (built without libsodium)")


@pytest.mark.parametrize("broken", ["missing", "garbage", "public instead of secret"])
def test_a_bad_key_file_is_one_line_and_exit_2(silent_server: str, tmp_path: Path, broken: str, capsys: pytest.CaptureFixture[str]) -> None:
    _curve_client_support()
    import zmq.auth

    server_public, _ = zmq.auth.create_certificates(str(tmp_path), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(tmp_path), "client")
    if broken == "missing":
        client_key = tmp_path / "nowhere.key_secret"
    elif broken == "garbage":
        client_key = tmp_path / "garbage.key_secret"
        client_key.write_text("not a key\n")
    else:
        client_key = Path(client_public)
    started = time.monotonic()
    code = megalive(
        [
            "livelink",
            "relay",
            "--server",
            silent_server,
            "--port",
            "0",
            "--timeout",
            "5",
            "--server-key",
            server_public,
            "--client-key",
            str(client_key),
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and time.monotonic() - started < 2.5  # said before the server is contacted
    assert captured.err.startswith("megalive livelink relay: bad CURVE key file: ") and captured.err.count("\n") == 1


def test_relay_talks_to_a_curve_server_with_its_keys(contract_model_path: Path, tmp_path: Path) -> None:
    """Both key options reach the client: a CURVE server answers the relay (here with its refusal of
    `arkit`, the contract model has no ARKit input) only when the relay's keys are right."""
    _curve_client_support()
    import zmq.auth

    from server.keys import load_server_keys

    allow = tmp_path / "allow"
    allow.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(str(tmp_path), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(allow), "client")
    Path(server_secret).chmod(0o600)
    keys = load_server_keys(secret_file=Path(server_secret), allow_dir=allow)
    curve_service = AvatarService(engine=Engine(model_path=contract_model_path), config=ServiceConfig(bind="tcp://127.0.0.1:*", curve=keys))
    curve_service.start()
    try:
        err = io.StringIO()
        config = RelayConfig(
            server=curve_service.bound_address, port=0, timeout_s=5.0, server_key=Path(server_public), client_key=Path(client_secret)
        )
        assert run_relay(config, out=io.StringIO(), err=err) == EXIT_REFUSED
        assert "the loaded model has no ARKit input" in err.getvalue()
        err = io.StringIO()  # without keys the CURVE server never answers
        plain = RelayConfig(server=curve_service.bound_address, port=0, timeout_s=0.5)
        assert run_relay(plain, out=io.StringIO(), err=err) == EXIT_SERVER_GONE
    finally:
        curve_service.stop()
