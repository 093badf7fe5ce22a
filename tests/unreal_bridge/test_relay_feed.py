"""The relay delivers: `megalive livelink relay --publish ADDR --record-png DIR` with a real server (the
64 px student with its ARKit driver), several subscribers, one that never reads, and the PNG sequence.

Counts only, never times. The test drives the relay in lockstep: a new Live Link packet once both
reading nodes hold the texture of the last one. A relay that waited for the stalled node would stop
the lockstep (the test fails on its deadline); a texture the readers lost shows as a gap in their seqs."""

from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from client.feed import FeedFrame, TextureSubscriber, decode_feed_message
from server.engine import Engine
from server.feed import open_texture_publisher
from server.service import AvatarService, ServiceConfig
from tests.unreal_bridge.test_relay import face_frame, listening_port, megalive
from unreal_bridge.livelink.packet import encode_packet
from unreal_bridge.relay import RelayConfig, run_relay

SIZE = (256, 256)  # 256 KB RGBA textures: a stalled node's socket buffers fill within a few dozen


@pytest.fixture
def arkit_server(multi_driver_model_path: Path) -> Iterator[str]:
    # No watermark: it costs about 0.1 s per 256 px texture on a 2-core box, and delivery is what is tested here.
    config = ServiceConfig(bind="tcp://127.0.0.1:*", watermark=False)
    service = AvatarService(engine=Engine(model_path=multi_driver_model_path), config=config)
    service.start()
    try:
        yield service.bound_address
    finally:
        service.stop()


def printed(out: io.StringIO, pattern: str, *, timeout_s: float = 20.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while (match := re.search(pattern, out.getvalue(), flags=re.MULTILINE)) is None:
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.01)
    return match


def stalled_node(address: str) -> zmq.Socket:
    """A render node that stopped reading (a small kernel buffer: it falls behind within a few textures)."""
    node = zmq.Context.instance().socket(zmq.SUB)
    node.setsockopt(zmq.LINGER, 0)
    node.setsockopt(zmq.RCVHWM, 2)
    node.setsockopt(zmq.RCVBUF, 32 * 1024)
    node.setsockopt(zmq.SUBSCRIBE, b"")
    node.connect(address)
    return node


def test_one_relay_feeds_several_nodes_a_node_that_never_reads_slows_nobody_and_the_pngs_are_written(
    arkit_server: str, tmp_path: Path
) -> None:
    png_dir = tmp_path / "png"
    config = RelayConfig(
        server=arkit_server,
        avatar=1,
        port=0,
        output_size=SIZE,
        publish="tcp://127.0.0.1:*",
        record_png=png_dir,
        progress_interval_s=0.1,
        timeout_s=10.0,
    )
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    result: list[int] = []
    relay = threading.Thread(target=lambda: result.append(run_relay(config, open_feed=open_texture_publisher, stop=stop, out=out, err=err)))
    relay.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    readers: list[TextureSubscriber] = []
    stalled = None
    wanted = 60
    try:
        port = listening_port(out)
        feed = printed(out, r"publishing textures on (\S+)$").group(1)
        readers = [TextureSubscriber(address=feed) for _ in range(2)]
        stalled = stalled_node(feed)
        printed(out, r"to 3 subscribers")  # every node has joined before the first texture
        received: list[list[FeedFrame]] = [[], []]
        packet = 0
        deadline = time.monotonic() + 120
        while len(received[0]) < wanted:
            assert time.monotonic() < deadline, (out.getvalue(), err.getvalue(), [len(r) for r in received])
            packet += 1
            sender.sendto(encode_packet(face_frame(offset=(packet % 100) / 1000)), ("127.0.0.1", port))  # curves stay in [0, 1]
            for reader, frames in zip(readers, received):
                # A lost datagram means no texture: the next packet is sent after this wait.
                frame = reader.wait_for_frame(2.0)
                if frame is not None:
                    frames.append(frame)
    finally:
        sender.close()
        stop.set()
        relay.join(timeout=30)
    assert result == [0], err.getvalue()
    published = int(printed(out, r"published (\d+) textures$").group(1))
    assert published >= wanted
    for frames, reader in zip(received, readers):
        # Every texture reached both reading nodes (a late one may have been handed out with the next: skipped).
        assert (reader.counters.received, reader.counters.missed, reader.counters.malformed) == (published, 0, 0)
        seqs = [frame.seq for frame in frames]
        assert seqs == sorted(set(seqs)) and seqs[-1] == published - 1
        assert all(frame.avatar == 1 and (frame.height, frame.width, frame.channels) == (*SIZE, 4) for frame in frames)
    first = {frame.seq: bytes(frame.pixels) for frame in received[0]}
    second = {frame.seq: bytes(frame.pixels) for frame in received[1]}
    assert all(first[seq] == second[seq] for seq in first.keys() & second.keys())  # the same textures to both
    assert len(set(first.values())) > 1  # which follow the curves
    assert stalled is not None
    stalled_seqs = []
    while stalled.poll(500):
        stalled_seqs.append(decode_feed_message(stalled.recv_multipart()).seq)
    # Its buffers hold a dozen textures or so: it lost the rest of its copies (and only its own, see above).
    assert 0 < len(stalled_seqs) < published and stalled_seqs == sorted(stalled_seqs)
    # The PNG sequence: one file per texture, the feed's seq in its name, the texture's pixels in it.
    written = re.search(rf"wrote (\d+) PNGs to {re.escape(str(png_dir))}( \((\d+) not written\))?$", out.getvalue(), flags=re.MULTILINE)
    assert written is not None, out.getvalue()
    files = sorted(png_dir.glob("frame_*.png"))
    assert len(files) == int(written.group(1)) and int(written.group(1)) + int(written.group(3) or 0) == published
    assert len(files) >= published // 2 and not list(png_dir.glob("*.partial"))
    by_seq = {frame.seq: frame for frame in received[0]}
    compared = 0
    for path in files:
        frame = by_seq.get(int(path.stem.split("_")[1]))
        if frame is not None:
            assert np.array_equal(np.asarray(Image.open(path)), frame.array())
            compared += 1
    assert compared >= len(files) // 2
    for reader in readers:
        reader.close()
    stalled.close()


def test_feed_and_png_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--publish", "tcp://0.0.0.0:5570", "--publish-curve-secret", "relay.key_secret", "--publish-allow", "nodes"]
    assert megalive(["livelink", "relay", *args, "--record-png", "shots", "--dry-run"]) == 0
    options = capsys.readouterr().out
    for key, value in (("publish", "tcp://0.0.0.0:5570"), ("publish_curve_secret", "relay.key_secret"), ("record_png", "shots")):
        assert f'"{key}": "{value}"' in options
    with pytest.raises(SystemExit):
        megalive(["livelink", "relay", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--publish ADDR" in help_text and "never slows the relay" in help_text and "--record-png DIR" in help_text


def relay_start_error(config: RelayConfig) -> tuple[int, str, float]:
    """Exit code, stderr and seconds of a relay that should stop before contacting its (silent) server."""
    err = io.StringIO()
    started = time.monotonic()
    code = run_relay(config, open_feed=open_texture_publisher, out=io.StringIO(), err=err)
    return code, err.getvalue(), time.monotonic() - started


@pytest.fixture
def silent_server() -> Iterator[str]:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    try:
        yield sock.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        sock.close()


def test_feed_and_png_problems_stop_the_relay_at_once_with_one_line(silent_server: str, tmp_path: Path) -> None:
    """Found before the server is contacted (a silent one here, which would cost --timeout)."""
    base = RelayConfig(server=silent_server, port=0, timeout_s=5.0)
    with open_texture_publisher(bind="tcp://127.0.0.1:*") as taken:
        cases = {
            "port in use": (replace(base, publish=taken.address), "the port is already in use"),
            "no keys off loopback": (replace(base, publish="tcp://0.0.0.0:*"), "--publish-curve-secret FILE"),
            "keys without a feed": (replace(base, publish_allow=tmp_path), "give --publish ADDR too"),
        }
        used = tmp_path / "used"
        used.mkdir()
        (used / "frame_000003.png").write_bytes(b"an earlier take")
        cases["a used PNG folder"] = (replace(base, record_png=used), "already holds a PNG sequence")
        for name, (config, words) in cases.items():
            code, err, seconds = relay_start_error(config)
            assert code == 2 and err.count("\n") == 1 and words in err, (name, err)
            assert err.startswith("megalive livelink relay: ") and seconds < 4.0, name  # before the 5 s server timeout
    assert (used / "frame_000003.png").read_bytes() == b"an earlier take"
    code, err, _ = relay_start_error(replace(base, publish="tcp://127.0.0.1:*", timeout_s=0.3))
    assert code == 3 and "server gone" in err  # the feed bound fine; the server is what is missing


def test_publish_needs_the_command_that_provides_a_feed(silent_server: str) -> None:
    err = io.StringIO()
    assert run_relay(RelayConfig(server=silent_server, port=0, publish="tcp://127.0.0.1:*"), out=io.StringIO(), err=err) == 2
    assert "publishing needs a feed implementation" in err.getvalue()


def test_the_packaged_relay_still_imports_inside_unreal_without_pillow_or_the_server(tmp_path: Path) -> None:
    """Unreal's editor imports relay.py (live_texture uses curves_payload): the PNG writer is imported only when used."""
    from unreal_bridge.package import build_unreal_bridge

    build_unreal_bridge(tmp_path / "out")
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("client", "contract", "server", "unreal_bridge", "PIL"):
                    raise ImportError(f"{{name}} must not be imported by the packaged relay")
                return None
        sys.meta_path.insert(0, Refuse())
        sys.path.insert(0, {str(tmp_path / "out")!r})
        from megalive_bridge import relay
        assert relay.RelayConfig().publish is None
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    shutil.rmtree(tmp_path / "out")
