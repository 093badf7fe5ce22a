"""The Live Link relay: payload layout, the server's refusal of `arkit` (real server on loopback),
and replay of a recorded take to a UDP receiver."""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from tests.conftest import free_tcp_port
from unreal_bridge.cli import add_livelink_commands, add_unreal_commands
from unreal_bridge.livelink_face import (ARKIT_BLENDSHAPES, CURVE_NAMES, FaceFrame, FrameTime, LiveLinkFaceReceiver,
                                         TakeWriter, encode_packet)
from unreal_bridge.relay import EXIT_REFUSED, EXIT_SERVER_GONE, RelayConfig, curves_payload, run_relay


def megalive(argv: list[str]) -> int:
    """What `megalive ...` does once server/cli.py registers the bridge's commands."""
    parser = argparse.ArgumentParser(prog="megalive")
    commands = parser.add_subparsers()
    add_livelink_commands(commands)
    add_unreal_commands(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def face_frame(subject: str = "iPhone", offset: float = 0.0) -> FaceFrame:
    values = tuple(offset + index / 64.0 for index in range(len(CURVE_NAMES)))  # all exact in float32
    return FaceFrame(device_id="dev", subject=subject, time=FrameTime(1, 0.0, 60, 1), values=values)


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


def test_relay_reports_a_missing_server() -> None:
    err = io.StringIO()
    code = run_relay(RelayConfig(server=f"tcp://127.0.0.1:{free_tcp_port()}", port=0, timeout_s=0.3), out=io.StringIO(), err=err)
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


def test_relay_loop_forwards_new_frames_records_the_take_and_stops_on_request(service: AvatarService, tmp_path: Path) -> None:
    """The loop itself, on an `image` session (no ARKit model exists yet): the server answers each
    forwarded 61-float frame with a bad_request error, which the relay counts without stopping."""
    import socket
    import threading

    from server.client import AvatarClient
    from unreal_bridge.livelink_face import read_take
    from unreal_bridge.relay import _relay_loop

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = RelayConfig(server=service.bound_address, listen="127.0.0.1", port=port, record=tmp_path / "take.llf",
                         progress_interval_s=0.2)
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    with AvatarClient(address=service.bound_address, timeout_s=5.0) as client:
        session = client.open(avatar=0, driver="image")
        result: list[int] = []
        loop = threading.Thread(target=lambda: result.append(_relay_loop(config, client, session, stop, out, err)))
        loop.start()
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
    import socket
    import threading

    arkit_service = AvatarService(engine=Engine(model_path=multi_driver_model_path), config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    arkit_service.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    result: list[int] = []
    config = RelayConfig(server=arkit_service.bound_address, avatar=1, listen="127.0.0.1", port=port, progress_interval_s=0.2)
    relay = threading.Thread(target=lambda: result.append(run_relay(config, stop=stop, out=out, err=err)))
    relay.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
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
