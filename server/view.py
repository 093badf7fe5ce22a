"""`megalive view`: subscribe to a texture feed (``megalive livelink relay --publish``) and show it.

A window (OpenCV's highgui) shows the newest texture; headless (``--no-window``), the textures can be
saved as a PNG sequence (``--save DIR``, named by the feed's seq like the relay's ``--record-png``) and
counted (``--frames N``). A progress line each second gives the rate, and what this viewer missed: a
viewer that falls behind loses textures (``missed``), it never slows the relay or the other nodes.

Exit status: 0 done (``--frames``/``--duration`` reached, window closed, Ctrl-C), 2 bad options (key
files, no display for a window, a save folder that holds a sequence), 3 no texture for ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import zmq

from client.client import CurveKeyError, load_curve_client_keys
from client.feed import DEFAULT_FEED_ADDRESS, FeedFrame, TextureSubscriber
from client.png_sequence import PngSequenceWriter, SequenceFolderError

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_FEED = 3
_PREFIX = "megalive view"


@dataclass(frozen=True)
class ViewConfig:
    connect: str = DEFAULT_FEED_ADDRESS
    publisher_key: Path | None = None  # CURVE: the relay's public .key file (with client_key)
    client_key: Path | None = None  # CURVE: this viewer's .key_secret file
    window: bool = True
    save: Path | None = None  # folder for a PNG sequence of the textures shown
    frames: int | None = None  # stop after this many textures
    duration_s: float | None = None  # stop after this long
    timeout_s: float = 10.0  # exit 3 when no texture arrives for this long (0: wait for ever)
    progress_interval_s: float = 1.0


@dataclass(frozen=True)
class ViewResult:
    exit_code: int
    shown: int
    seconds: float
    missed: int
    skipped: int
    malformed: int
    saved: int


class ViewStartError(Exception):
    """A local problem found before any texture is awaited; its text is the one line printed."""


def display_problem() -> str | None:
    """Why no window can open here (one line), or None. OpenCV's wheel draws through X11 on Linux; an
    X server it cannot reach would abort the process, so the socket is looked for first."""
    if not sys.platform.startswith("linux"):
        return None
    display = os.environ.get("DISPLAY", "")
    if not display:
        return "no display (DISPLAY is not set): run it on a desktop, or use --no-window with --save DIR or --frames N"
    host, _, number = display.rpartition(":")
    if host in ("", "unix"):
        socket_path = Path("/tmp/.X11-unix") / f"X{number.split('.')[0]}"
        if not socket_path.exists():
            return f"no X server at DISPLAY={display} ({socket_path} is missing): use --no-window with --save DIR or --frames N"
    return None


class FeedWindow:
    """One OpenCV highgui window; ``show`` draws a texture, ``closed`` pumps its events (call it often)."""

    def __init__(self, *, title: str) -> None:
        import cv2

        self._cv2 = cv2
        self.title = title
        self._shown = False
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)  # resizable: a 64 px texture can be looked at

    def show(self, frame: FeedFrame) -> None:
        import numpy as np

        rgb = frame.array()[..., :3]
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # highgui wants BGR
        if not self._shown:
            scale = max(1, 512 // max(frame.width, frame.height))
            self._cv2.resizeWindow(self.title, frame.width * scale, frame.height * scale)
        self._cv2.imshow(self.title, bgr)
        self._shown = True

    def closed(self) -> bool:
        """True once the user pressed q or Esc, or closed the window."""
        key = self._cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            return True
        return self._shown and self._cv2.getWindowProperty(self.title, self._cv2.WND_PROP_VISIBLE) < 1

    def close(self) -> None:
        self._cv2.destroyWindow(self.title)
        self._cv2.waitKey(1)


def _open_subscriber(config: ViewConfig) -> TextureSubscriber:
    if (config.publisher_key is None) != (config.client_key is None):
        raise ViewStartError("--publisher-key and --client-key go together: the relay's public key file and this viewer's secret key file")
    curve = None
    if config.publisher_key is not None and config.client_key is not None:
        try:
            curve = load_curve_client_keys(server_public_key=config.publisher_key, client_secret_key=config.client_key)
        except CurveKeyError as error:
            raise ViewStartError(f"bad CURVE key file: {error}") from None
    try:
        return TextureSubscriber(address=config.connect, curve=curve)
    except zmq.ZMQError as error:  # a malformed address
        raise ViewStartError(f"cannot connect to {config.connect}: {error}") from None


def run_view(
    config: ViewConfig,
    *,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> ViewResult:
    """Subscribe and show/save/count textures until done; every wait is bounded (50 ms)."""
    stop = stop or threading.Event()
    out = out or sys.stdout
    err = err or sys.stderr
    started = time.monotonic()
    window: FeedWindow | None = None
    png: PngSequenceWriter | None = None
    subscriber: TextureSubscriber | None = None
    shown = 0

    def result(code: int) -> ViewResult:
        counters = subscriber.counters if subscriber is not None else None
        return ViewResult(
            exit_code=code,
            shown=shown,
            seconds=time.monotonic() - started,
            missed=counters.missed if counters else 0,
            skipped=counters.skipped if counters else 0,
            malformed=counters.malformed if counters else 0,
            saved=png.written if png is not None else 0,
        )

    try:
        if config.window and (problem := display_problem()) is not None:
            raise ViewStartError(problem)
        subscriber = _open_subscriber(config)
        if config.save is not None:
            try:
                png = PngSequenceWriter(directory=config.save)
            except SequenceFolderError as error:
                raise ViewStartError(str(error)) from None
        if config.window:
            try:
                window = FeedWindow(title=f"MegaLive {config.connect}")
            except ImportError:
                raise ViewStartError(
                    "the window needs OpenCV (opencv-contrib-python, which `make install-dev` installs); or use --no-window"
                ) from None
    except ViewStartError as error:
        print(f"{_PREFIX}: {error}", file=err, flush=True)
        if subscriber is not None:
            subscriber.close()
        if png is not None:
            png.close()
        return result(EXIT_USAGE)

    print(f"{_PREFIX}: subscribed to {config.connect}", file=out, flush=True)
    last_texture = last_report = started
    reported = 0
    code = EXIT_OK
    try:
        while not stop.is_set():
            frame = subscriber.receive_latest(timeout_ms=10 if window is not None else 50)
            now = time.monotonic()
            if frame is not None:
                shown += 1
                last_texture = now
                if png is not None:
                    # Waits for room: a viewer that saves every texture it shows falls behind, not the feed.
                    png.submit(
                        seq=frame.seq, pixels=frame.pixels, width=frame.width, height=frame.height, channels=frame.channels, block=True
                    )
                if window is not None:
                    window.show(frame)
            if window is not None and window.closed():
                break
            if config.frames is not None and shown >= config.frames:
                break
            if config.duration_s is not None and now - started >= config.duration_s:
                break
            if config.timeout_s > 0 and now - last_texture >= config.timeout_s:
                waited = "no texture" if shown == 0 else "no new texture"
                hint = subscriber.problem or "is a relay publishing there (megalive livelink relay --publish ADDR)?"
                print(f"{_PREFIX}: {waited} from {config.connect} in {config.timeout_s:g} s: {hint}", file=err, flush=True)
                code = EXIT_NO_FEED
                break
            if now - last_report >= config.progress_interval_s:
                counters = subscriber.counters
                fps = (shown - reported) / (now - last_report)
                print(
                    f"shown {shown}  {fps:5.1f} fps  missed {counters.missed}  skipped {counters.skipped}  malformed {counters.malformed}",
                    file=out,
                    flush=True,
                )
                last_report, reported = now, shown
    finally:
        if window is not None:
            window.close()
        if png is not None:
            png.close()
        subscriber.close()
    final = result(code)
    rate = final.shown / final.seconds if final.seconds > 0 else 0.0
    saved = ""
    if png is not None:
        saved = f"; saved {final.saved} PNGs to {config.save}" + (f" (stopped: {png.failure})" if png.failure else "")
    print(
        f"{_PREFIX}: {final.shown} textures in {final.seconds:.1f} s ({rate:.1f} fps); missed {final.missed}, "
        f"skipped {final.skipped}, malformed {final.malformed}{saved}",
        file=out,
        flush=True,
    )
    return final


# -------------------------------------------------------------------------------------------------- command line


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def add_view_command(subparsers: Any) -> None:
    """Register `view` on a `megalive` subparsers object."""
    view = subparsers.add_parser(
        "view",
        help="show the textures a relay publishes (a window, or headless: save and count)",
        description="Subscribe to a texture feed (megalive livelink relay --publish ADDR) and show the newest texture in a "
        "window; headless, save them as PNGs and print the rate. A viewer that falls behind misses textures and never slows "
        "the relay or other nodes. Exit status: 0 done, 2 bad options or no display, 3 no texture for --timeout seconds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    view.add_argument("--connect", default=DEFAULT_FEED_ADDRESS, metavar="ADDR", help="the relay's --publish address")
    view.add_argument(
        "--publisher-key", type=Path, default=None, metavar="FILE", help="CURVE: the relay's public .key file (with --client-key)"
    )
    view.add_argument("--client-key", type=Path, default=None, metavar="FILE", help="CURVE: this viewer's .key_secret file")
    view.add_argument("--no-window", action="store_true", help="no window (headless): save and/or count only")
    view.add_argument(
        "--save", type=Path, default=None, metavar="DIR", help="save every texture shown as DIR/frame_NNNNNN.png (NNNNNN: feed seq)"
    )
    view.add_argument("--frames", type=_positive_int, default=None, metavar="N", help="stop after N textures; none: until stopped")
    view.add_argument("--duration", type=_seconds, default=None, metavar="S", help="stop after S seconds; none: until stopped")
    view.add_argument(
        "--timeout", type=_seconds, default=10.0, metavar="S", help="exit 3 when no texture arrives for S seconds; 0: wait for ever"
    )
    view.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
    view.set_defaults(run=_view)


def _view(args: argparse.Namespace) -> int:
    config = ViewConfig(
        connect=args.connect,
        publisher_key=args.publisher_key,
        client_key=args.client_key,
        window=not args.no_window,
        save=args.save,
        frames=args.frames,
        duration_s=args.duration,
        timeout_s=args.timeout,
    )
    if args.dry_run:
        print(json.dumps(asdict(config), indent=2, default=str))
        return EXIT_OK
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_view(config, stop=stop).exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
