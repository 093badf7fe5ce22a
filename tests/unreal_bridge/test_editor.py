"""The Unreal editor side against a real server and the contract model, with the host replaced by
tests/unreal_bridge/fake_unreal.py (a fake of only the `unreal` calls the bridge makes)."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from server import imaging
from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from tests.client.test_client import curve_service, make_curve_files
from tests.unreal_bridge import fake_unreal
from unreal_bridge.editor.png import encode_png


@pytest.fixture
def service(engine: Engine, address: str):
    service = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    service.start()
    yield service
    service.stop()


@pytest.fixture
def driver_image(tmp_path: Path) -> tuple[Path, np.ndarray]:
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = tmp_path / "still.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def host_with(fake: ModuleType) -> ModuleType:
    """Import unreal_host fresh against the fake `unreal` module installed in sys.modules."""
    sys.modules.pop("unreal_bridge.editor.unreal_host", None)
    return importlib.import_module("unreal_bridge.editor.unreal_host")


@pytest.fixture
def restore_unreal():
    yield
    sys.modules.pop("unreal", None)
    sys.modules.pop("unreal_bridge.editor.unreal_host", None)


def tick_until(fake: ModuleType, done: Any, *, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        fake.fire_tick()
        time.sleep(0.005)


def expected_texture(engine: Engine, pixels: np.ndarray, avatar: int) -> np.ndarray:
    output = engine.run(imaging.to_engine_batch([pixels]), np.array([avatar]))
    return imaging.to_texture_pixels(output.rgb, output.alpha)[0]


def assert_close(texture_bytes: bytes, expected: np.ndarray) -> None:
    got = np.frombuffer(texture_bytes, np.uint8).reshape(expected.shape)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # batch-size rounding only


@pytest.mark.usefixtures("restore_unreal")
def test_native_path_updates_one_texture_with_the_servers_pixels_and_stop_cleans_up(
    service: AvatarService, engine: Engine, driver_image: tuple[Path, np.ndarray]
) -> None:
    fake = fake_unreal.install(native=True)
    host = host_with(fake)
    report = host.start(server=service.bound_address, avatar=1, driver="video", video_path=str(driver_image[0]))
    assert "MegaLive: connected" in report and "pixel path: native" in report
    assert len(fake.tick_callbacks) == 1
    tick_until(fake, lambda: fake.created_textures and fake.created_textures[0].updates >= 1)
    texture = fake.created_textures[0]
    assert (texture.width, texture.height) == (32, 32)
    assert_close(texture.pixels, expected_texture(engine, driver_image[1], avatar=1))
    assert fake.parameter_sets == [(fake.material_instance, "AvatarTexture", texture)]
    tick_until(fake, lambda: texture.updates >= 2, timeout_s=5)  # the still is resent: same texture, updated in place
    assert len(fake.created_textures) == 1

    active = host._active
    host.stop()
    assert fake.tick_callbacks == {} and len(fake.unregistered) == 1
    assert not active.controller.client.connected  # socket closed
    assert active.state == "stopped" and host.status() == "MegaLive: not running"


@pytest.mark.usefixtures("restore_unreal")
def test_fallback_path_imports_png_textures_when_the_cpp_helper_is_absent(
    service: AvatarService, engine: Engine, driver_image: tuple[Path, np.ndarray]
) -> None:
    fake = fake_unreal.install(native=False)
    host = host_with(fake)
    report = host.start(server=service.bound_address, avatar=2, video_path=str(driver_image[0]), material_parameter="Face")
    assert "pixel path: fallback" in report and "import_buffer_as_texture2d" in report
    tick_until(fake, lambda: fake.imported_buffers)
    texture = fake.created_textures[0]
    assert_close(texture.pixels, expected_texture(engine, driver_image[1], avatar=2))
    assert fake.parameter_sets == [(fake.material_instance, "Face", texture)]
    assert "fallback" in host.status()
    host.stop()
    assert fake.tick_callbacks == {}


@pytest.mark.usefixtures("restore_unreal")
def test_arkit_driver_is_refused_clearly_in_the_editor(service: AvatarService) -> None:
    fake = fake_unreal.install(native=True)
    host = host_with(fake)
    report = host.start(server=service.bound_address, driver="arkit")
    assert "refused: the loaded model has no 'arkit' input" in report
    host.stop()


@pytest.mark.usefixtures("restore_unreal")
def test_enroll_from_the_console_does_not_wait_and_status_says_the_new_avatar(enrollable_model_path: Path, tmp_path: Path) -> None:
    astronaut = pytest.importorskip("skimage.data").astronaut()
    pytest.importorskip("mediapipe")
    photo = tmp_path / "me.png"
    Image.fromarray(astronaut).save(photo)
    engine = Engine(model_path=enrollable_model_path, bank_path=tmp_path / "bank.avatars.npz", warmup=False)
    service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    service.start()
    try:
        fake = fake_unreal.install(native=True)
        host = host_with(fake)
        report = host.enroll(str(photo), "Ada", "I, Ada, agree to this avatar of my face", server=service.bound_address)
        assert report == "MegaLive: enrolling 'Ada': sending 1 portrait(s)"  # returned at once: the editor goes on
        assert host._enrolling.wait(60)
        assert "enrolled avatar 3 'Ada' from 1 portrait(s)" in host.status()
        host.enroll(str(photo), "Bea", "", server=service.bound_address)
        assert host._enrolling.wait(60) and "consent statement is required" in host.status()
        assert host.stop_refining() == "MegaLive: no refinement is running"
    finally:
        service.stop()


@pytest.mark.usefixtures("restore_unreal")
def test_status_follows_the_refinement_and_stop_refining_keeps_the_one_shot_avatar(refinable_model_path: Path, tmp_path: Path) -> None:
    import sys
    import time

    from server.refinement import RefinementJobs

    astronaut = pytest.importorskip("skimage.data").astronaut()
    pytest.importorskip("mediapipe")
    photo = tmp_path / "me.png"
    Image.fromarray(astronaut).save(photo)
    engine = Engine(model_path=refinable_model_path, bank_path=tmp_path / "bank.avatars.npz", warmup=False)
    service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    service.refinement = RefinementJobs(card=engine.card, command=(sys.executable, "-m", "models.cli", "enroll", "--allow-missing-nets"))
    service.start()
    try:
        host = host_with(fake_unreal.install(native=True))
        host.enroll(str(photo), "Ada", "I, Ada, agree to this avatar of my face", server=service.bound_address, refine_steps=1000)
        deadline = time.monotonic() + 120
        while "refining: step" not in host.status() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "enrolled avatar 3 'Ada'" in host.status() and "refining: step" in host.status()
        assert host.stop_refining().startswith("MegaLive: stopping the refinement")
        assert host._enrolling.wait(30) and "refinement cancelled: the one-shot avatar stays" in host.status()
    finally:
        service.stop()


def test_png_encoder_round_trips_through_pillow() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    import io

    decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels.tobytes(), width=7, height=5))))
    assert decoded.shape == (5, 7, 4) and (decoded == pixels).all()


@pytest.mark.usefixtures("restore_unreal")
def test_a_video_file_drives_the_live_texture(service: AvatarService, engine: Engine, tmp_path: Path) -> None:
    import imageio_ffmpeg

    # A 2-frame-per-colour clip of flat colours: lossy video keeps flat colours within a few levels.
    colours = [(200, 40, 40), (40, 200, 40)]
    video = tmp_path / "take.mp4"
    writer = imageio_ffmpeg.write_frames(
        str(video), (32, 32), fps=10, codec="libx264", pix_fmt_out="yuv444p", quality=10, macro_block_size=1, ffmpeg_log_level="error"
    )
    writer.send(None)
    for colour in colours:
        for _ in range(5):
            writer.send(np.full((32, 32, 3), colour, np.uint8))
    writer.close()

    from unreal_bridge.editor.live_texture import VideoFileSource

    source = VideoFileSource(path=video)
    deadline = time.monotonic() + 10
    while source.frame_key() is None:
        assert time.monotonic() < deadline and source.error is None, source.error
        time.sleep(0.01)
    index = source.frame_key()
    pixels = source.payload(index).array()
    assert pixels.shape == (32, 32, 3) and source.fps == 10.0
    assert min(np.abs(pixels.reshape(-1, 3).mean(0) - np.array(c)).max() for c in colours) < 8
    source.close()

    fake = fake_unreal.install(native=True)
    host = host_with(fake)
    report = host.start(server=service.bound_address, avatar=0, driver="video", video_path=str(video), crop="none")  # no face in it
    assert "MegaLive: connected" in report and "video" in report and "crop auto" not in report
    tick_until(fake, lambda: fake.created_textures and fake.created_textures[0].updates >= 1)
    host.stop()


def test_video_source_refuses_a_missing_file(tmp_path: Path) -> None:
    from unreal_bridge.editor.live_texture import VideoFileSource

    with pytest.raises(ValueError, match="not found"):
        VideoFileSource(path=tmp_path / "none.mp4")


@pytest.mark.usefixtures("restore_unreal")
def test_curve_keys_reach_the_server_and_a_bad_key_file_is_said_in_the_report(
    engine: Engine, driver_image: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    files = make_curve_files(tmp_path / "keys")
    service = curve_service(engine, files)
    service.start()
    try:
        fake = fake_unreal.install(native=True)
        host = host_with(fake)
        report = host.start(
            server=service.bound_address,
            avatar=1,
            video_path=str(driver_image[0]),
            server_public_key=str(files.server_public),
            client_secret_key=str(files.client_secret),
        )
        assert "MegaLive: connected" in report and "(CURVE)" in report
        tick_until(fake, lambda: fake.created_textures and fake.created_textures[0].updates >= 1)
        assert_close(fake.created_textures[0].pixels, expected_texture(engine, driver_image[1], avatar=1))
        host.stop()

        missing = tmp_path / "keys" / "editor.key_secret"
        report = host.start(
            server=service.bound_address,
            avatar=1,
            video_path=str(driver_image[0]),
            server_public_key=str(files.server_public),
            client_secret_key=str(missing),
        )
        assert f"MegaLive: refused: client secret key {missing}: no such file" in report.splitlines()
        for _ in range(3):
            fake.fire_tick()  # the tick of a refused start does nothing, and raises nothing
        assert host._active.last_error == "" and not host._active.controller.client.connected
        host.stop()
    finally:
        service.stop()


# ------------------------------------------------------------------------------------------------
# Footage: crop "auto" (the default for video files), frames at their own aspect, a take that starts without a face

WIDE = (480, 270)  # 16:9, (width, height)


def server_decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shape of every driver frame the server decodes (its own decoder, called through)."""
    shapes: list[tuple[int, ...]] = []
    decode = imaging.decode_driver_image

    def recording(buffer: Any, *, max_pixels: int, request_id: int | None = None) -> np.ndarray:
        image = decode(buffer, max_pixels=max_pixels, request_id=request_id)
        shapes.append(image.shape)
        return image

    monkeypatch.setattr(imaging, "decode_driver_image", recording)
    return shapes


@pytest.mark.usefixtures("restore_unreal")
def test_a_wide_video_goes_whole_and_the_servers_auto_crop_finds_the_face(
    service: AvatarService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mediapipe")
    from contract.landmarks import crop_box_from_landmarks
    from tests.blender_addon.footage import face_frame, write_movie

    received = server_decodes(monkeypatch)
    frame, truth = face_frame(size=WIDE, face_width=80.0, centre=(340.0, 110.0))
    video = write_movie(tmp_path / "wide.mp4", [frame] * 10)
    fake = fake_unreal.install(native=True)
    host = host_with(fake)
    report = host.start(server=service.bound_address, avatar=1, video_path=str(video))  # crop: auto for a video file
    assert "MegaLive: connected" in report and "crop auto" in report
    tick_until(fake, lambda: fake.created_textures and fake.created_textures[0].updates >= 1)
    assert received and set(received) == {(WIDE[1], WIDE[0], 3)}  # its own aspect
    ((cropper, _),) = service.worker.croppers.values()
    expected = crop_box_from_landmarks(truth)
    assert abs(cropper._last_box[0] - expected[0]) < 4 and abs(cropper._last_box[1] - expected[1]) < 4
    assert abs(cropper._last_box[2] / expected[2] - 1) < 0.06
    host.stop()


@pytest.mark.usefixtures("restore_unreal")
def test_a_video_that_starts_without_a_face_says_so_and_goes_on(service: AvatarService, tmp_path: Path) -> None:
    pytest.importorskip("mediapipe")
    from tests.blender_addon.footage import face_frame, grey_frame, write_movie

    frame, _ = face_frame(size=WIDE, face_width=80.0, centre=(240.0, 135.0))
    video = write_movie(tmp_path / "late.mp4", [grey_frame(WIDE)] * 5 + [frame] * 5)  # the face from 0.5 s on
    fake = fake_unreal.install(native=True)
    host = host_with(fake)
    host.start(server=service.bound_address, avatar=0, video_path=str(video))
    controller = host._active.controller
    tick_until(fake, lambda: controller.figures.frame_errors >= 1)
    assert "frame error: bad_request: no face found" in host.status() and controller.phase == "live"
    tick_until(fake, lambda: fake.created_textures and fake.created_textures[0].updates >= 1)  # the loop went on
    assert "frame error:" not in host.status() and host._active.last_error == ""
    host.stop()


@pytest.mark.usefixtures("restore_unreal")
def test_start_refuses_a_crop_it_does_not_know(service: AvatarService, driver_image: tuple[Path, np.ndarray]) -> None:
    fake = fake_unreal.install(native=True)
    host = host_with(fake)
    with pytest.raises(ValueError, match="crop must be 'auto' or 'none'"):
        host.start(server=service.bound_address, video_path=str(driver_image[0]), crop="square")
    with pytest.raises(ValueError, match="arkit curves are not pictures"):
        host.start(server=service.bound_address, driver="arkit", crop="auto")
    assert host._active is None and fake.tick_callbacks == {}
    report = host.start(server=service.bound_address, avatar=1, video_path=str(driver_image[0]))  # a still: crop "none"
    assert "crop auto" not in report
    host.stop()


def first_decoded(source: Any) -> np.ndarray:
    deadline = time.monotonic() + 10
    while source.frame_key() is None:
        assert time.monotonic() < deadline and source.error is None, source.error
        time.sleep(0.01)
    return source.payload(source.frame_key()).array()


def test_a_phone_video_arrives_upright_and_a_huge_one_scaled_down_with_its_aspect(tmp_path: Path) -> None:
    from tests.blender_addon.footage import face_frame, write_movie
    from unreal_bridge.editor.live_texture import VideoFileSource

    upright, _ = face_frame(size=(WIDE[1], WIDE[0]), face_width=80.0, centre=(100.0, 300.0))
    phone = write_movie(tmp_path / "phone.mp4", [upright] * 3, display_rotation=90)  # stored 480×270, turned
    source = VideoFileSource(path=phone)
    try:
        pixels = first_decoded(source)
        assert pixels.shape == (WIDE[0], WIDE[1], 3)  # 480 tall, 270 wide: as the phone was held
        assert np.abs(pixels.astype(int) - upright.astype(int)).mean() < 4  # and not turned
    finally:
        source.close()
    source = VideoFileSource(path=phone, max_pixels=480 * 270 // 4)  # as if it were an 8K video
    try:
        assert first_decoded(source).shape == (WIDE[0] // 2, WIDE[1] // 2 // 2 * 2, 3)  # 240×134: half each way, even
    finally:
        source.close()
