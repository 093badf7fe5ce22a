"""The shared live controller (client/live.py) that the Blender extension and the Unreal bridge both
ship: its tick never blocks, a gone server is noticed and reconnected after back-off, and the
image-sequence reader both hosts use."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from client import protocol
from client.client import SERVER_GONE, AvatarClient
from client.live import DriverError, ImageSequenceFiles, LiveConfig, LiveController
from contract.arkit import ARKIT_CURVES
from server import imaging
from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from tests.client.test_client import FakeServer, curve_service, make_curve_files


class LoopedFiles:
    """A DriverSource over ImageSequenceFiles, one file per ``fps`` tick of the wall clock."""

    def __init__(self, folder: Path, *, fps: float) -> None:
        self.files = ImageSequenceFiles(folder)
        self.fps = fps
        self._start = time.monotonic()

    def frame_key(self) -> Hashable | None:
        return int((time.monotonic() - self._start) * self.fps) % len(self.files)

    def payload(self, key: Hashable) -> protocol.Buffer:
        assert isinstance(key, int)
        return self.files.encoded(key)


class SpyClient(AvatarClient):
    """Records every call that can block (a request/reply round trip, or a wait) and its thread."""

    BLOCKING = ("hello", "open", "reconnect", "avatars", "stats", "close_session", "_request", "_request_connected", "_reopen")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.blocking_calls: list[tuple[str, int]] = []
        self.waits: list[tuple[str, float, int]] = []
        for name in self.BLOCKING:
            setattr(self, name, self._recorded(name, getattr(self, name)))

    def _recorded(self, name: str, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.blocking_calls.append((name, threading.get_ident()))
            return method(*args, **kwargs)

        return call

    def poll(self, timeout_ms: int = 0) -> list:
        self.waits.append(("poll", timeout_ms, threading.get_ident()))
        return super().poll(timeout_ms)

    def _send(self, header: dict[str, Any], buffers: tuple, *, wait_s: float, raise_gone: bool = True) -> bool:
        self.waits.append(("send", wait_s, threading.get_ident()))
        return super()._send(header, buffers, wait_s=wait_s, raise_gone=raise_gone)


def test_tick_never_blocks_reports_server_gone_and_reconnects_after_backoff(engine: Engine, address: str, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * index, np.uint8)).save(frames / f"{index:03d}.png")
    config = LiveConfig(server=address, timeout_s=0.3, reconnect_delay_s=0.05, max_reconnect_delay_s=0.2)
    client = SpyClient(address=address, timeout_s=config.timeout_s, max_in_flight=2)
    controller = LiveController(config=config, client=client)
    source = LoopedFiles(frames, fps=30)
    main_thread = threading.get_ident()
    textures: list[Any] = []

    def tick_until_state(predicate: Any, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"stuck in phase {controller.phase!r} ({controller.detail})"
            texture = controller.tick(source)
            if texture is not None:
                textures.append(texture)
            time.sleep(0.002)

    first = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    first.start()
    try:
        assert controller.connect_and_start_live(avatar=0) and controller.phase == "live"
        client.blocking_calls.clear()
        client.waits.clear()
        tick_until_state(lambda: bool(textures))
    finally:
        first.stop()

    tick_until_state(lambda: controller.phase == "gone")
    assert controller.detail
    tick_until_state(lambda: controller.phase == "reconnecting")  # after the back-off, on a worker
    for _ in range(20):  # the server is still gone: attempts fail in the background, the tick goes on
        controller.tick(source)
        time.sleep(0.01)
    assert controller.phase in ("reconnecting", "gone")

    second = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    second.start()
    try:
        tick_until_state(lambda: controller.phase == "live")
        textures.clear()
        tick_until_state(lambda: bool(textures))
        assert controller.figures.reconnects >= 1
        # Frames lost with the first server ended as server_gone errors: counted, not shown as the detail.
        assert SERVER_GONE not in controller.detail
    finally:
        controller.close()
        second.stop()

    # Structural: no round trip and no waiting ever ran on the tick's thread ...
    assert [name for name, thread in client.blocking_calls if thread == main_thread] == []
    assert {wait for _, wait, thread in client.waits if thread == main_thread} <= {0}
    assert any(thread != main_thread for _, thread in client.blocking_calls)  # reconnects ran on the worker
    # No wall-clock assertion (shared machines); bench/live_tick_server_gone.py measures the tick's cost.


def test_a_server_absent_at_start_is_waited_for_in_the_background(engine: Engine, address: str, tmp_path: Path) -> None:
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "still.png")
    config = LiveConfig(server=address, timeout_s=0.3, reconnect_delay_s=0.05, max_reconnect_delay_s=0.2)
    controller = LiveController(config=config)
    source = LoopedFiles(tmp_path, fps=30)
    assert not controller.connect_and_start_live(avatar=1)
    assert controller.phase == "gone" and controller.is_live
    service = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    service.start()
    try:
        deadline = time.monotonic() + 10
        texture = None
        while texture is None:
            assert time.monotonic() < deadline, f"stuck in phase {controller.phase!r} ({controller.detail})"
            texture = controller.tick(source)
            time.sleep(0.005)
        assert controller.phase == "live" and texture.buffer.shape[:2] == (32, 32)
    finally:
        controller.close()
        service.stop()
    assert controller.closed and not controller.client.connected


def test_a_refused_open_is_terminal(engine: Engine, address: str) -> None:
    service = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    service.start()
    try:
        controller = LiveController(config=LiveConfig(server=address, timeout_s=1.0))
        assert not controller.connect_and_start_live(avatar=0, driver="arkit")
        assert controller.phase == "refused" and "arkit" in controller.detail and not controller.is_live
        assert controller.tick(None) is None and controller.phase == "refused"
        controller.close()
    finally:
        service.stop()


def test_image_sequence_files(tmp_path: Path) -> None:
    with pytest.raises(DriverError):
        ImageSequenceFiles(tmp_path / "nope")
    with pytest.raises(DriverError):
        ImageSequenceFiles(tmp_path)
    for i in range(3):
        (tmp_path / f"f{i}.png").write_bytes(bytes([i]))
    files = ImageSequenceFiles(tmp_path / "f1.png")
    assert len(files) == 3 and bytes(files.encoded(4).data) == b"\x01" and files.encoded(0).codec == "png"
    alone = ImageSequenceFiles(tmp_path / "f1.png", file_means_its_folder=False)
    assert len(alone) == 1 and bytes(alone.encoded(5).data) == b"\x01"
    (tmp_path / "take.mp4").write_bytes(b"")
    with pytest.raises(DriverError, match="neither"):
        ImageSequenceFiles(tmp_path / "take.mp4", file_means_its_folder=False)


def test_the_live_session_opens_with_the_stabilise_choice(multi_driver_model_path: Path) -> None:
    """start_live(stabilise=False) reaches the server: an arkit session renders its curves unfiltered."""
    engine = Engine(model_path=multi_driver_model_path)
    service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    service.start()
    controller = LiveController(config=LiveConfig(server=service.bound_address))
    try:
        assert controller.connect() and controller.start_live(avatar=2, driver="arkit", stabilise=False)
        curves = [np.zeros(len(ARKIT_CURVES), np.float32), np.zeros(len(ARKIT_CURVES), np.float32)]
        curves[1][17] = 1.0  # jawOpen: a step that a filter would soften
        textures = []
        for step, frame in enumerate(curves):
            texture = None
            deadline = time.monotonic() + 10
            source = CurvesSource(step, frame)
            while texture is None:
                assert time.monotonic() < deadline, controller.detail
                texture = controller.tick(source)
                time.sleep(0.01)
            textures.append(texture.buffer.array())
        expected = engine.run(curves[1][None], np.array([2]), kind="arkit")
        np.testing.assert_array_equal(textures[1], imaging.to_texture_pixels(expected.rgb, expected.alpha)[0])
    finally:
        controller.close()
        service.stop()


class CurvesSource:
    """A DriverSource of one fixed frame (ARKit curves, or any array)."""

    def __init__(self, key: int, curves: np.ndarray) -> None:
        self.key, self.curves = key, curves

    def frame_key(self) -> int:
        return self.key

    def payload(self, key: Hashable) -> protocol.Buffer:
        return protocol.raw_buffer_from_array(self.curves)


def test_a_bad_curve_key_file_is_one_line_in_the_status_not_a_traceback(tmp_path: Path) -> None:
    files = make_curve_files(tmp_path / "keys")
    missing = tmp_path / "keys" / "nowhere.key"
    for config, says in [
        (LiveConfig(server_public_key=str(missing), client_secret_key=str(files.client_secret)), f"{missing}: no such file"),
        (LiveConfig(server_public_key=str(files.server_public), client_secret_key=str(files.client_public)), "holds no secret key"),
        (LiveConfig(client_secret_key=str(files.client_secret)), "needs the server's public key file too"),
    ]:
        controller = LiveController(config=LiveConfig(**{**vars(config), "timeout_s": 0.3}))
        assert controller.phase == "refused" and says in controller.detail and len(controller.detail.splitlines()) == 1
        assert not controller.connect() and not controller.connect_and_start_live(avatar=0)
        assert controller.phase == "refused" and says in controller.detail
        assert controller.tick(None) is None and not controller.client.connected  # nothing was tried
        controller.close()


def test_live_textures_over_curve(engine: Engine, tmp_path: Path) -> None:
    files = make_curve_files(tmp_path / "keys")
    service = curve_service(engine, files)
    service.start()
    config = LiveConfig(
        server=service.bound_address, server_public_key=str(files.server_public), client_secret_key=str(files.client_secret)
    )
    controller = LiveController(config=config)
    try:
        assert controller.client.curve is not None
        assert controller.connect_and_start_live(avatar=0), controller.detail
        texture = None
        deadline = time.monotonic() + 10
        while texture is None:
            assert time.monotonic() < deadline, controller.detail
            texture = controller.tick(CurvesSource(0, np.full((32, 32, 3), 7, np.uint8)))  # any fixed frame
            time.sleep(0.005)
        assert texture.buffer.shape == (32, 32, 4)
    finally:
        controller.close()
        service.stop()

    # The same keys against a server that does not allow this client: the status says why, in one line.
    stranger = LiveConfig(
        server=config.server, server_public_key=config.server_public_key, client_secret_key=str(files.stranger_secret), timeout_s=2.0
    )
    service = curve_service(engine, files, bind=config.server)
    service.start()
    controller = LiveController(config=stranger)
    try:
        assert not controller.connect()
        assert "refused this client's CURVE key" in controller.detail and len(controller.detail.splitlines()) == 1
    finally:
        controller.close()
        service.stop()


def test_a_server_whose_engine_drops_every_frame_shows_as_gone() -> None:
    with FakeServer(frames="dropped") as fake:
        controller = LiveController(config=LiveConfig(server=fake.address, timeout_s=0.3, reconnect_delay_s=5.0))
        source = CurvesSource(0, np.full((32, 32, 3), 7, np.uint8))  # any fixed frame
        try:
            assert controller.connect_and_start_live(avatar=0)
            deadline = time.monotonic() + 10
            while controller.phase == "live":
                assert time.monotonic() < deadline, controller.detail
                assert controller.tick(source) is None
                time.sleep(0.005)
            assert controller.phase == "gone" and "drops every frame" in controller.detail
            assert controller.figures.dropped >= 1 and controller.figures.textures == 0
        finally:
            controller.close()
