"""Command-line entries of the Unreal bridge, registered into `megalive` by megalive/cli.py:

megalive livelink relay   [options]      Live Link Face -> server `arkit` session
megalive livelink replay  FILE [options] send a recorded take to a UDP port
megalive unreal package   --out DIR      build the folder to copy into an Unreal project
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from .livelink.receiver import DEFAULT_BIND_ADDRESS, DEFAULT_PORT
from .livelink.take import DEFAULT_TAKE_MAX_BYTES, TAKE_MAGIC

if TYPE_CHECKING:
    from .relay import OpenFeed

_Subparsers = argparse._SubParsersAction  # argparse has no public name for it


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _size(text: str) -> tuple[int, int]:
    height, sep, width = text.partition("x")
    if not sep or not height.isdigit() or not width.isdigit():
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}")
    return int(height), int(width)


def _positive_speed(text: str) -> float:
    speed = float(text)
    if not speed > 0:
        raise argparse.ArgumentTypeError(f"speed must be > 0 (inf: no waiting), got {text!r}")
    return speed


def _megabytes(text: str) -> float:
    try:
        megabytes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MB, got {text!r}") from None
    # The take header alone is len(TAKE_MAGIC) bytes; NaN and inf fail this test too.
    if not len(TAKE_MAGIC) <= megabytes * 1e6 < float(1 << 62):
        raise argparse.ArgumentTypeError(f"size must be at least {len(TAKE_MAGIC) / 1e6:g} MB (a take's header), got {text!r}")
    return megabytes


def add_livelink_commands(subparsers: _Subparsers, *, open_feed: OpenFeed | None = None) -> None:
    """Register `livelink relay` and `livelink replay` on a `megalive` subparsers object.

    ``open_feed`` binds the relay's texture feed for ``--publish`` (megalive/cli.py passes server/feed.py's;
    this package may not import the server). Without it ``--publish`` ends with one line, exit 2."""
    livelink = subparsers.add_parser(
        "livelink", help="Live Link Face relay and take replay", description="Live Link Face (iPhone ARKit over UDP) tools."
    )
    commands = livelink.add_subparsers(title="livelink commands", metavar="COMMAND")

    relay = commands.add_parser(
        "relay",
        help="forward Live Link Face curves to a server arkit session",
        description="Receive Live Link Face on UDP, open an 'arkit' session on the server and forward the newest curves "
        "of a subject as float32[61] frames. Exits non-zero with one line when the server refuses (e.g. the loaded model "
        "has no ARKit input). Stops cleanly on Ctrl-C or SIGTERM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    relay.add_argument("--server", default="tcp://127.0.0.1:5555", metavar="ADDR", help="MegaLive server address")
    relay.add_argument("--avatar", type=int, default=0, metavar="ID", help="avatar id (see `megalive avatars`)")
    relay.add_argument("--subject", default=None, metavar="NAME", help="Live Link subject to forward; none: the newest of any")
    relay.add_argument(
        "--listen",
        default=DEFAULT_BIND_ADDRESS,
        metavar="ADDR",
        help="UDP address to receive on; loopback takes only this machine's packets (e.g. a replay): "
        "a phone on the LAN needs --listen 0.0.0.0 (or this machine's LAN address)",
    )
    relay.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N", help="UDP port of Live Link Face [0-65535; 0: any]")
    relay.add_argument("--size", type=_size, default=None, metavar="HxW", help="output texture size; none: the model's")
    relay.add_argument("--timeout", type=float, default=2.0, metavar="S", help="seconds to wait for the server")
    relay.add_argument("--window", type=int, default=2, metavar="N", help="frames in flight [1-8]")
    relay.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="FILE",
        help="also record the raw packets as a take (written as FILE.partial, renamed to FILE when finished)",
    )
    relay.add_argument(
        "--record-max-mb",
        type=_megabytes,
        default=DEFAULT_TAKE_MAX_BYTES / 1e6,
        metavar="MB",
        help="size cap of the take in MB (10^6 bytes): reaching it finishes the take, says so once and relaying goes on",
    )
    relay.add_argument(
        "--server-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="CURVE encryption for a remote server: the server's public key file (with --client-key)",
    )
    relay.add_argument(
        "--client-key", type=Path, default=None, metavar="FILE", help="CURVE encryption: this client's secret key file (with --server-key)"
    )
    relay.add_argument(
        "--publish",
        default=None,
        metavar="ADDR",
        help="also publish every texture to subscribers (render nodes, `megalive view`) on this ZeroMQ address, "
        "e.g. tcp://127.0.0.1:5570; another host only with --publish-curve-secret and --publish-allow. "
        "A subscriber that falls behind loses textures and never slows the relay or the others",
    )
    relay.add_argument(
        "--publish-curve-secret", type=Path, default=None, metavar="FILE", help="CURVE for the feed: the relay's .key_secret file"
    )
    relay.add_argument(
        "--publish-allow",
        type=Path,
        default=None,
        metavar="DIR",
        help="CURVE for the feed: folder of allowed subscribers' public .key files",
    )
    relay.add_argument(
        "--record-png",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write every texture as DIR/frame_NNNNNN.png (NNNNNN: the feed's seq; each file renamed into place "
        "when complete); DIR must hold no sequence yet. Frames the disk cannot keep up with are counted, not queued",
    )
    relay.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds; none: run until stopped")
    relay.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
    relay.set_defaults(run=_relay, open_feed=open_feed)

    replay = commands.add_parser(
        "replay",
        help="send a recorded take to a UDP port at its recorded timing",
        description="Replay a take recorded with `megalive livelink relay --record` as Live Link Face UDP packets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    replay.add_argument("file", type=Path, metavar="FILE", help="take file")
    replay.add_argument("--to", type=_host_port, default=("127.0.0.1", DEFAULT_PORT), metavar="HOST:PORT", help="where to send")
    replay.add_argument("--speed", type=_positive_speed, default=1.0, metavar="X", help="time scale; 2 = twice as fast, inf = no waiting")
    replay.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
    replay.set_defaults(run=_replay)


def add_unreal_commands(subparsers: _Subparsers) -> None:
    """Register `unreal package` on a `megalive` subparsers object."""
    unreal = subparsers.add_parser("unreal", help="build the Unreal editor bridge", description="Unreal Engine editor bridge (UE 5.3-5.6).")
    commands = unreal.add_subparsers(title="unreal commands", metavar="COMMAND")
    package = commands.add_parser(
        "package",
        help="build the folder to copy into an Unreal project",
        description="Write megalive_bridge/ (editor Python + vendored client/contract copies) and the MegaLiveTexture C++ plugin into DIR.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    package.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    package.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
    package.set_defaults(run=_package)


def _print_options(args: argparse.Namespace) -> None:
    options = {key: value for key, value in vars(args).items() if key not in ("run", "dry_run", "verbose", "open_feed")}
    print(json.dumps(options, indent=2, default=str))


def _relay(args: argparse.Namespace) -> int:
    from .relay import RelayConfig, run_relay

    if not 1 <= args.window <= 8:
        raise SystemExit("megalive livelink relay: --window must be between 1 and 8")
    if not 0 <= args.port <= 65535:
        raise SystemExit("megalive livelink relay: --port must be between 0 and 65535")
    config = RelayConfig(
        server=args.server,
        avatar=args.avatar,
        subject=args.subject,
        listen=args.listen,
        port=args.port,
        output_size=args.size,
        timeout_s=args.timeout,
        max_in_flight=args.window,
        record=args.record,
        record_max_bytes=int(args.record_max_mb * 1e6),
        server_key=args.server_key,
        client_key=args.client_key,
        duration_s=args.duration,
        publish=args.publish,
        publish_curve_secret=args.publish_curve_secret,
        publish_allow=args.publish_allow,
        record_png=args.record_png,
    )
    if args.dry_run:
        print(json.dumps(asdict(config), indent=2, default=str))
        return 0
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_relay(config, open_feed=args.open_feed, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _replay(args: argparse.Namespace) -> int:
    from .livelink.take import replay_take

    if args.dry_run:
        _print_options(args)
        return 0
    try:
        sent = replay_take(args.file, address=args.to, speed=args.speed)
    except (OSError, ValueError) as error:
        print(f"megalive livelink replay: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("megalive livelink replay: interrupted", file=sys.stderr)
        return 130
    speed = "no waiting" if math.isinf(args.speed) else f"speed {args.speed:g}"
    print(f"megalive livelink replay: sent {sent} packets to {args.to[0]}:{args.to[1]} ({speed})")
    return 0


def _package(args: argparse.Namespace) -> int:
    from .package import build_unreal_bridge

    if args.dry_run:
        _print_options(args)
        return 0
    package = build_unreal_bridge(args.out)
    print(
        f"megalive unreal package: wrote {package.python_package} (copy into <Project>/Content/Python/) "
        f"and {package.plugin} (optional, into <Project>/Plugins/)"
    )
    return 0
