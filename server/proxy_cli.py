"""`megalive proxy`: one address in front of several `megalive serve` processes (server/proxy.py)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from server import __version__

if TYPE_CHECKING:
    from server.proxy import ProxyConfig


def add_proxy_command(commands: argparse._SubParsersAction) -> None:
    proxy = commands.add_parser(
        "proxy",
        help="one address in front of several servers (sessions stick to a server)",
        description="Relay MegaLive clients to several servers, e.g. one `megalive serve` per GPU. A session stays on the server "
        "that opened it; new sessions go to the server with the fewest; when a server stops answering, its sessions are "
        "told unknown_session and clients reopen them on another. The servers must serve the same model. "
        "Exit status: 0 stopped, 1 the proxy failed, 2 bad options or an address that cannot be bound.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    proxy.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5555",
        metavar="ADDR",
        help="the address clients use: loopback, ipc:// in a private folder, or any host with --curve-secret and --allow",
    )
    proxy.add_argument(
        "--backend", action="append", default=[], metavar="ADDR", help="a server's address (repeat for each server) [1 or more]"
    )
    proxy.add_argument("--curve-secret", type=Path, default=None, metavar="FILE", help="the proxy's CURVE .key_secret file for clients")
    proxy.add_argument("--allow", type=Path, default=None, metavar="DIR", help="folder of allowed clients' CURVE public .key files")
    proxy.add_argument(
        "--backend-key",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="servers' CURVE public .key: once for all, or once per --backend in order (servers on other hosts)",
    )
    proxy.add_argument(
        "--proxy-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the proxy's own .key_secret towards CURVE servers (its .key goes into their --allow folders)",
    )
    proxy.add_argument("--probe-interval", type=float, default=0.5, metavar="S", help="send each server a hello this often [0.05-10]")
    proxy.add_argument(
        "--probe-timeout",
        type=float,
        default=1.5,
        metavar="S",
        help="a server silent this long is down and its sessions move [probe interval-60]; keep it under clients' timeout (2 s)",
    )
    proxy.add_argument(
        "--idle-timeout", type=float, default=120.0, metavar="S", help="forget a client after this many seconds without a message"
    )
    proxy.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    proxy.set_defaults(run=_proxy)


def proxy_config(args: argparse.Namespace) -> ProxyConfig:
    """The proxy's configuration from the options; ValueError (one line) for a bad one."""
    from client.client import CurveClientKeys, load_curve_client_keys
    from server.binding import check_bind_address
    from server.keys import load_server_keys
    from server.proxy import BackendLink, ProxyConfig

    if not args.backend:
        raise ValueError("give at least one --backend ADDR (a `megalive serve` address)")
    if not 0.05 <= args.probe_interval <= 10:
        raise ValueError("--probe-interval must be between 0.05 and 10 seconds")
    if not args.probe_interval <= args.probe_timeout <= 60:
        raise ValueError("--probe-timeout must be between --probe-interval and 60 seconds")
    if not args.idle_timeout > 0:
        raise ValueError("--idle-timeout must be a positive number of seconds")
    if (args.curve_secret is None) != (args.allow is None):
        raise ValueError("--curve-secret and --allow go together")
    if bool(args.backend_key) != (args.proxy_key is not None):
        raise ValueError("--backend-key and --proxy-key go together")
    if len(args.backend_key) not in (0, 1, len(args.backend)):
        raise ValueError(f"give --backend-key once (all servers) or once per --backend ({len(args.backend)}), not {len(args.backend_key)}")
    keys: list[CurveClientKeys | None] = [None] * len(args.backend)
    if args.backend_key:
        files = args.backend_key * len(args.backend) if len(args.backend_key) == 1 else args.backend_key
        keys = [load_curve_client_keys(server_public_key=file, client_secret_key=args.proxy_key) for file in files]
    front = None if args.curve_secret is None else load_server_keys(secret_file=args.curve_secret, allow_dir=args.allow)
    check_bind_address(args.bind, curve=front is not None)
    return ProxyConfig(
        backends=tuple(BackendLink(address=address, curve=key) for address, key in zip(args.backend, keys)),
        bind=args.bind,
        curve=front,
        probe_interval_s=args.probe_interval,
        probe_timeout_s=args.probe_timeout,
        client_idle_s=args.idle_timeout,
    )


def _proxy(args: argparse.Namespace) -> int:
    from server.proxy import AvatarProxy

    try:
        config = proxy_config(args)
        if args.dry_run:
            shown = {
                "bind": config.bind,
                "curve": None
                if config.curve is None
                else {"public": config.curve.public.decode(), "allow_dir": str(config.curve.allow_dir)},
                "backends": [{"address": b.address, "curve": b.curve is not None} for b in config.backends],
                "probe_interval_s": config.probe_interval_s,
                "probe_timeout_s": config.probe_timeout_s,
                "client_idle_s": config.client_idle_s,
            }
            print(json.dumps(shown, indent=2))
            return 0
        proxy = AvatarProxy(config=config)
        address = proxy.start()
    except ValueError as error:  # BindRefused, KeyFileError, CurveKeyError, ProxyConfigError: one-line messages
        print(f"megalive proxy: {error}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        proxy.stop(timeout_s=0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    states = proxy.backend_states()
    backends = ", ".join(f"{b.address} ({b.state})" for b in states)
    print(f"megalive {__version__}: proxy on {address}{' with CURVE' if config.curve else ''} for {backends}", flush=True)
    for backend in states:
        if backend.state != "up":
            print(f"megalive proxy: backend {backend.address} is down for now: {backend.why}", file=sys.stderr, flush=True)
    while proxy.is_running():
        proxy.wait(0.5)
    if proxy.failure is not None:
        print(f"megalive proxy: the proxy failed: {proxy.failure}", file=sys.stderr, flush=True)
        return 1
    print("megalive: stopped", flush=True)
    return 0
