"""`megalive`: the runtime's commands (serve, keys, bench, avatars, demo), the Blender extension's
(addon build) and the Unreal bridge's (livelink, unreal), in one parser."""

from __future__ import annotations

import argparse
import logging
import sys

from blender_addon.package import add_addon_commands
from server import __version__
from server.cli import add_runtime_commands
from server.feed import open_texture_publisher
from server.view import add_view_command
from unreal_bridge.cli import add_livelink_commands, add_unreal_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megalive", description="MegaLive runtime: real-time neural head avatars over ZeroMQ.")
    parser.add_argument("--version", action="version", version=f"megalive {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_runtime_commands(commands)
    add_view_command(commands)
    add_livelink_commands(commands, open_feed=open_texture_publisher)  # the relay's --publish feed is the server's
    add_unreal_commands(commands)
    add_addon_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
