"""The server under hostile and heavy clients: the README's hardening figures. Figures only; nothing
passes or fails on a time.

Each phase runs a real `megalive serve` process (the shipped model unless --model says otherwise) on
loopback and reads its resident memory from /proc:

  1. streaming   8 clients stream image frames for --long seconds: replies (textures, dropped,
                 errors) against frames sent, and the server's RSS growth after the first 5 s;
  2. deaf        2 clients that never read, at the largest output size the server allows, for
                 --long seconds: the server's peak RSS against the bound it announces;
  3. bombs       one client streams alone, then beside an attacker process sending decompression bombs
                 (1-bit PNGs of 13300² pixels, 22 KB each) at 100/s, 1000/s and flat out: the
                 streaming client's frame rate and its ratio to the quiet rate; and, as a control,
                 the same flat-out flood sent to another process instead of the server;
  4. curve       one client streams to a CURVE server and to a plain one, alternating: the ratio.

    .venv/bin/python bench/server_hardening.py --json runs/hardening.json
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from client import protocol  # noqa: E402
from client.client import AvatarClient, FrameDropped, FrameError, Texture, load_curve_client_keys  # noqa: E402
from server.bench import start_server, stop_server  # noqa: E402
from server.engine import model_or_shipped  # noqa: E402
from server.keys import new_keypair  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


class RssSampler:
    """Samples a process's RSS every 0.25 s on a thread: (seconds since start, MiB) pairs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._began, rss_mib(self.pid)))
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, seconds: float) -> float:
        return next(rss for t, rss in self.samples if t >= seconds)

    def peak_after(self, seconds: float) -> float:
        return max(rss for t, rss in self.samples if t >= seconds)


@dataclass
class StreamCount:
    sent: int = 0
    textures: int = 0
    dropped: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def replied(self) -> int:
        return self.textures + self.dropped + self.errors

    @property
    def fps(self) -> float:
        return self.textures / self.seconds if self.seconds else 0.0


def stream(address: str, seconds: float, resolution: int, *, curve_keys=None, seed: int = 0) -> StreamCount:
    """One well-behaved client keeping 2 frames in flight for `seconds`, then draining every reply."""
    frames = [np.random.default_rng(seed + i).integers(0, 256, (resolution, resolution, 3), dtype=np.uint8) for i in range(4)]
    count = StreamCount()
    with AvatarClient(address=address, timeout_s=10.0, curve=curve_keys, name="hardening-bench") as client:
        session = client.open(avatar=seed % 8)

        def take(events: list) -> None:
            for event in events:
                if isinstance(event, Texture):
                    count.textures += 1
                elif isinstance(event, FrameDropped):
                    count.dropped += 1
                elif isinstance(event, FrameError):
                    count.errors += 1

        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            while client.can_send(session):
                client.send_frame(session, frames[count.sent % len(frames)])
                count.sent += 1
            take(client.poll(timeout_ms=5))
        count.seconds = time.perf_counter() - began
        deadline = time.monotonic() + 10
        while client.in_flight(session) and time.monotonic() < deadline:
            take(client.poll(timeout_ms=20))
    return count


def raw_peer(address: str, *, deaf: bool) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if deaf:  # a client that never reads: its ZeroMQ stops taking replies off the wire after one
        socket.setsockopt(zmq.RCVHWM, 1)
        socket.setsockopt(zmq.RCVBUF, 4096)
    socket.connect(address)
    return socket


def raw_open(socket: zmq.Socket, **fields) -> tuple[int, str]:
    socket.send_multipart(protocol.encode({"op": "open", "id": 1, "avatar": 0, **fields}))
    if not socket.poll(10_000):
        raise RuntimeError("no reply to open")
    reply = protocol.decode(socket.recv_multipart())
    if reply.op != "open":
        raise RuntimeError(f"open refused: {reply.header}")
    return reply.header["session"], reply.header["token"]


def bomb_png(side: int = 13300) -> bytes:
    """A 1-bit greyscale PNG of side² pixels, all black: about 22 KB, and side² × 3 bytes once decoded to RGB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes((side + 7) // 8)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def flood(
    address: str, payload: protocol.Buffer, stop: threading.Event, *, deaf: bool, size: list[int] | None = None, every_s: float = 0.01
) -> int:
    """Send frames of `payload` on one session every `every_s` until `stop`; returns how many were sent."""
    socket = raw_peer(address, deaf=deaf)
    session, token = raw_open(socket, **({"size": size} if size else {}))
    sent = 0
    try:
        while not stop.is_set():
            try:
                socket.send_multipart(
                    protocol.encode({"op": "frame", "id": 10 + sent, "session": session, "token": token, "seq": sent}, (payload,)),
                    zmq.NOBLOCK,
                )
                sent += 1
            except zmq.Again:
                pass  # the server's receive queue for us is full: it reads at its own pace
            if not deaf:
                while socket.poll(0):
                    socket.recv_multipart()
            stop.wait(every_s)
    finally:
        socket.close(linger=0)
    return sent


def in_thread(target, *args, **kwargs) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(target(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, result


def hello_limits(address: str) -> dict:
    with AvatarClient(address=address, timeout_s=10.0) as client:
        return client.hello().limits


def phase_streaming(model: Path, seconds: float, resolution: int) -> dict:
    process, address = start_server(model)
    try:
        sampler = RssSampler(process.pid)
        runs = [in_thread(stream, address, seconds, resolution, seed=i) for i in range(8)]
        counts = []
        for thread, result in runs:
            thread.join()
            counts.append(result[0])
        sampler.stop()
    finally:
        stop_server(process)
    sent, replied = sum(c.sent for c in counts), sum(c.replied for c in counts)
    return {
        "clients": 8,
        "seconds": seconds,
        "sent": sent,
        "replied": replied,
        "textures": sum(c.textures for c in counts),
        "dropped": sum(c.dropped for c in counts),
        "errors": sum(c.errors for c in counts),
        "lost": sent - replied,
        "total_fps": sum(c.fps for c in counts),
        "rss_at_5s_mib": sampler.at(5.0),
        "rss_end_mib": sampler.samples[-1][1],
        "rss_peak_after_5s_mib": sampler.peak_after(5.0),
        "rss_growth_after_5s_mib": sampler.peak_after(5.0) - sampler.at(5.0),
    }


def phase_deaf(model: Path, seconds: float, resolution: int) -> dict:
    process, address = start_server(model)
    try:
        limits = hello_limits(address)
        side = int(limits["max_output_pixels"] ** 0.5)
        baseline = rss_mib(process.pid)
        sampler = RssSampler(process.pid)
        stop = threading.Event()
        frame = protocol.raw_buffer_from_array(np.random.default_rng(0).integers(0, 256, (resolution, resolution, 3), dtype=np.uint8))
        floods = [in_thread(flood, address, frame, stop, deaf=True, size=[side, side]) for _ in range(2)]
        time.sleep(seconds)
        stop.set()
        sent = 0
        for thread, result in floods:
            thread.join()
            sent += result[0] if result else 0
        with AvatarClient(address=address, timeout_s=10.0) as client:
            stats = client.stats()
        sampler.stop()
    finally:
        stop_server(process)
    bound = 2 * limits["max_queued_reply_bytes"] / MIB
    return {
        "clients": 2,
        "seconds": seconds,
        "output": f"{side}×{side}",
        "frames_sent": sent,
        "rss_before_mib": baseline,
        "rss_peak_mib": sampler.peak_after(0.0),
        "rss_growth_peak_mib": sampler.peak_after(0.0) - baseline,
        "announced_queue_bound_mib_per_client": limits["max_queued_reply_bytes"] / MIB,
        "bound_two_clients_mib": bound,
        "replies_dropped_by_the_bound": stats["server"]["reply_overflow"],
    }


# The sink of the control run: a process that takes the bombs in place of the server (answers `open`, reads and
# discards the rest), so the control measures what the flood costs the machine, not the server.
_SINK = """
import sys, zmq
sys.path.insert(0, sys.argv[1])
from client import protocol
router = zmq.Context().socket(zmq.ROUTER)
router.bind("tcp://127.0.0.1:*")
print(router.last_endpoint.decode(), flush=True)
while True:
    frames = router.recv_multipart()
    header = protocol.unpack_header(frames[1])
    if header.get("op") == "open":
        router.send_multipart([frames[0], *protocol.encode({"op": "open", "id": header["id"], "session": 1, "token": "x"})])
"""


def _beside_bomber(address: str, bomb_address: str, seconds: float, resolution: int, every_s: float) -> tuple[float, int]:
    """The streaming client's frame rate while a separate attacker process sends bombs to bomb_address."""
    bomber = subprocess.Popen(
        [sys.executable, __file__, "--bomber", bomb_address, "--short", str(seconds + 2), "--bomb-every", str(every_s)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    time.sleep(1.0)
    fps = stream(address, seconds, resolution).fps
    return fps, int(bomber.communicate(timeout=seconds + 30)[0].strip() or 0)


def phase_bombs(model: Path, seconds: float, resolution: int) -> dict:
    process, address = start_server(model)
    sink = subprocess.Popen([sys.executable, "-c", _SINK, str(REPO_ROOT)], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    sink_address = sink.stdout.readline().strip()
    figures: dict = {"bomb_bytes": len(bomb_png())}
    try:
        stream(address, 3.0, resolution)  # warm-up
        quiet = stream(address, seconds, resolution).fps
        figures["quiet_fps"] = quiet
        for label, every_s in (("100_per_s", 0.01), ("1000_per_s", 0.001), ("flat_out", 0.0)):
            fps, sent = _beside_bomber(address, address, seconds, resolution, every_s)
            figures[label] = {"bombs_per_s": sent / (seconds + 2), "fps": fps, "ratio": fps / quiet}
        fps, sent = _beside_bomber(address, sink_address, seconds, resolution, 0.0)
        figures["flat_out_control"] = {
            "bombs_per_s": sent / (seconds + 2),
            "fps": fps,
            "ratio": fps / quiet,
            "note": "the same flood sent to another process: the machine's own limit",
        }
        with AvatarClient(address=address, timeout_s=10.0) as client:
            stats = client.stats()
        figures["bombs_refused"] = stats["server"]["bad_frames"]
        figures["messages_shed"] = stats["server"]["shed_messages"]
    finally:
        stop_server(process)
        sink.kill()
    return figures


def run_bomber(address: str, seconds: float, every_s: float) -> int:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return flood(address, protocol.EncodedBuffer(codec="png", data=memoryview(bomb_png())), stop, deaf=False, every_s=every_s)


def phase_curve(model: Path, seconds: float, resolution: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        keys = Path(folder)
        _, server_secret = new_keypair(keys / "server", "server")
        allow = keys / "allow"
        client_public, client_secret = new_keypair(allow, "client")
        plain, plain_address = start_server(model)
        curve, curve_address = start_server(model, options=("--curve-secret", str(server_secret), "--allow", str(allow)))
        client_keys = load_curve_client_keys(server_public_key=keys / "server" / "server.key", client_secret_key=client_secret)
        try:
            stream(plain_address, 3.0, resolution)
            stream(curve_address, 3.0, resolution, curve_keys=client_keys)
            plain_fps, curve_fps = [], []
            for _ in range(2):  # alternate, so a drift of the machine's speed hits both alike
                plain_fps.append(stream(plain_address, seconds / 2, resolution).fps)
                curve_fps.append(stream(curve_address, seconds / 2, resolution, curve_keys=client_keys).fps)
        finally:
            stop_server(plain)
            stop_server(curve)
    return {
        "plain_fps": float(np.mean(plain_fps)),
        "curve_fps": float(np.mean(curve_fps)),
        "ratio": float(np.mean(curve_fps) / np.mean(plain_fps)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, metavar="PATH", help="avatar model .onnx; default: the shipped model")
    parser.add_argument("--long", type=float, default=60.0, metavar="S", help="length of the streaming and deaf-client phases")
    parser.add_argument("--short", type=float, default=10.0, metavar="S", help="length of each measured part of the bomb and CURVE phases")
    parser.add_argument("--phases", default="streaming,deaf,bombs,curve", metavar="LIST", help="which phases to run")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--bomb-every", type=float, default=0.0, metavar="S", help="the bomber's pause between bombs; 0: flat out")
    parser.add_argument("--bomber", default=None, metavar="ADDR", help=argparse.SUPPRESS)  # the bombs phase's attacker process
    args = parser.parse_args(argv)
    if args.bomber:
        print(run_bomber(args.bomber, args.short, args.bomb_every))
        return 0
    model = model_or_shipped(args.model)
    resolution = json.loads(model.with_suffix(".json").read_text())["resolution"][0]
    phases = {
        "streaming": (phase_streaming, args.long),
        "deaf": (phase_deaf, args.long),
        "bombs": (phase_bombs, args.short),
        "curve": (phase_curve, args.short),
    }
    figures: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "model": str(model),
    }
    for name in args.phases.split(","):
        run, seconds = phases[name]
        print(f"{name} ({seconds:.0f} s) ...", flush=True)
        figures[name] = run(model, seconds, resolution)
        print(json.dumps(figures[name], indent=2, default=float), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
