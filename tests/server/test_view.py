"""`megalive view` (server/view.py): headless subscribing, saving and counting against a real feed
publisher on loopback; the one-line errors for no display, no feed, bad keys and a used save folder.
The window itself is exercised only where a display exists."""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from PIL import Image

from client.protocol import raw_buffer_from_array
from megalive.cli import main as megalive
from server.feed import PublisherConfig, TexturePublisher, open_texture_publisher
from server.view import EXIT_NO_FEED, EXIT_USAGE, ViewConfig, display_problem, run_view


def texture_for(seq: int) -> np.ndarray:
    pixels = np.zeros((12, 16, 4), np.uint8)
    pixels[..., 0] = seq % 256
    pixels[..., 1] = np.arange(16, dtype=np.uint8)  # not uniform: a transposed or flipped save would show
    pixels[..., 3] = 255
    return pixels


@pytest.fixture
def live_feed() -> Iterator[str]:
    """A publisher sending texture_for(seq) every few milliseconds until the test ends."""
    stop = threading.Event()
    publisher = TexturePublisher(config=PublisherConfig(bind="tcp://127.0.0.1:*"))

    def publish() -> None:
        seq = 0
        while not stop.wait(0.005):
            publisher.publish(raw_buffer_from_array(texture_for(seq)), seq=seq, source_seq=seq, avatar=1)
            seq += 1

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        yield publisher.address
    finally:
        stop.set()
        thread.join()
        publisher.close()


def test_headless_view_saves_and_counts_the_textures(live_feed: str, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    result = run_view(ViewConfig(connect=live_feed, window=False, save=tmp_path / "seq", frames=5), out=out, err=err)
    assert result.exit_code == 0 and result.shown == 5 and result.saved == 5 and err.getvalue() == ""
    files = sorted((tmp_path / "seq").glob("frame_*.png"))
    assert len(files) == 5 and not list((tmp_path / "seq").glob("*.partial"))
    for path in files:
        seq = int(path.stem.split("_")[1])  # named by the feed's seq
        assert np.array_equal(np.asarray(Image.open(path)), texture_for(seq))
    lines = out.getvalue().splitlines()
    assert lines[0] == f"megalive view: subscribed to {live_feed}"
    assert lines[-1].startswith("megalive view: 5 textures in ") and " fps); missed " in lines[-1]
    assert lines[-1].endswith(f"saved 5 PNGs to {tmp_path / 'seq'}")


def test_view_command_is_registered_in_megalive(live_feed: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert megalive(["view", "--connect", live_feed, "--no-window", "--frames", "3"]) == 0
    assert "megalive view: 3 textures in " in capsys.readouterr().out
    assert megalive(["view", "--connect", "tcp://10.1.2.3:5570", "--frames", "2", "--dry-run"]) == 0
    options = json.loads(capsys.readouterr().out)
    assert options["connect"] == "tcp://10.1.2.3:5570" and options["frames"] == 2 and options["window"] is True


@pytest.mark.parametrize("display, words", [(None, "no display (DISPLAY is not set)"), (":987", "no X server at DISPLAY=:987")])
def test_a_window_without_a_display_is_one_line_and_exit_2(
    display: str | None, words: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the X11 display check is Linux's")
    if display is None:
        monkeypatch.delenv("DISPLAY", raising=False)
    else:
        monkeypatch.setenv("DISPLAY", display)
    assert megalive(["view", "--connect", "tcp://127.0.0.1:5570"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("megalive view: ") and words in captured.err
    assert "--no-window" in captured.err and captured.out == ""


def test_no_feed_is_one_line_and_exit_3(tmp_path: Path) -> None:
    silent = zmq.Context.instance().socket(zmq.XPUB)  # bound, never publishes
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind("tcp://127.0.0.1:*")
    try:
        address = silent.getsockopt_string(zmq.LAST_ENDPOINT)
        err = io.StringIO()
        result = run_view(ViewConfig(connect=address, window=False, timeout_s=0.3), out=io.StringIO(), err=err)
        assert result.exit_code == EXIT_NO_FEED and result.shown == 0
        assert err.getvalue().count("\n") == 1
        assert err.getvalue().startswith(f"megalive view: no texture from {address} in 0.3 s: is a relay publishing there")
    finally:
        silent.close()


def test_bad_options_are_one_line_and_exit_2(live_feed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert megalive(["view", "--connect", live_feed, "--no-window", "--publisher-key", str(tmp_path / "relay.key")]) == EXIT_USAGE
    assert "--publisher-key and --client-key go together" in capsys.readouterr().err
    missing = ["--publisher-key", str(tmp_path / "relay.key"), "--client-key", str(tmp_path / "me.key_secret")]
    assert megalive(["view", "--connect", live_feed, "--no-window", *missing]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("megalive view: bad CURVE key file: ") and err.count("\n") == 1
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "frame_000000.png").write_bytes(b"earlier take")
    assert megalive(["view", "--connect", live_feed, "--no-window", "--save", str(tmp_path / "used")]) == EXIT_USAGE
    assert "already holds a PNG sequence" in capsys.readouterr().err
    assert (tmp_path / "used" / "frame_000000.png").read_bytes() == b"earlier take"
    for bad in (["--frames", "0"], ["--timeout", "-1"], ["--duration", "soon"]):
        with pytest.raises(SystemExit) as exit_info:
            megalive(["view", "--no-window", *bad])
        assert exit_info.value.code == 2


def test_a_curve_feed_is_seen_with_keys_and_explained_without(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not zmq.has("curve"):
        pytest.skip("this libzmq has no CURVE")
    allow = tmp_path / "allow"
    allow.mkdir()
    relay_public, relay_secret = zmq.auth.create_certificates(str(tmp_path), "relay")
    _, viewer_secret = zmq.auth.create_certificates(str(allow), "viewer")
    Path(relay_secret).chmod(0o600)
    stop = threading.Event()
    publisher = open_texture_publisher(bind="tcp://127.0.0.1:*", curve_secret=Path(relay_secret), allow=allow)

    def publish() -> None:
        seq = 0
        while not stop.wait(0.005):
            publisher.publish(raw_buffer_from_array(texture_for(seq)), seq=seq, source_seq=seq, avatar=0)
            seq += 1

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        keys = ["--publisher-key", relay_public, "--client-key", viewer_secret]
        assert megalive(["view", "--connect", publisher.address, "--no-window", "--frames", "2", *keys]) == 0
        assert "megalive view: 2 textures in " in capsys.readouterr().out
        assert megalive(["view", "--connect", publisher.address, "--no-window", "--timeout", "2"]) == EXIT_NO_FEED
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "CURVE" in err  # "requires CURVE", or "may require CURVE" when the publisher hangs up first
    finally:
        stop.set()
        thread.join()
        publisher.close()


@pytest.mark.skipif(display_problem() is not None, reason="no display here: the window is checked where one exists")
def test_the_window_shows_textures_where_a_display_exists(live_feed: str) -> None:
    result = run_view(ViewConfig(connect=live_feed, frames=3), out=io.StringIO(), err=io.StringIO())
    assert result.exit_code == 0 and result.shown == 3
