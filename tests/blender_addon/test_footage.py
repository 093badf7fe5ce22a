"""Ordinary footage through the installed extension (the `bpy` module) and a real server on loopback: a 16:9 movie
clip with a small face off centre, a phone-style clip stored turned with rotation metadata, a take that starts with
no face, and the camera render's aspect. With Auto Crop (on by default for movie clips and camera renders) frames go
whole at their own aspect and the server's auto-crop cuts the face; nothing is stretched to square.

Test order: like test_shape_keys.py, this module installs the extension itself and leaves it enabled at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import bpy
import numpy as np
import pytest
from PIL import Image

from blender_addon import pixels
from blender_addon.vocabulary import frame_size_at, session_crop
from client.protocol import Buffer
from contract.landmarks import crop_box_from_landmarks, crop_square
from server import imaging
from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from tests.blender_addon.bpy_helpers import image_as_texture, install_addon, tick_until
from tests.blender_addon.footage import face_frame, grey_frame, write_movie

AVATAR = 1
WIDE = (480, 270)  # a 16:9 frame, (width, height)
FACE_WIDTH = 80.0  # jaw end to jaw end, px: small in the frame, as in a wide shot
FACE_CENTRE = (340.0, 110.0)  # right of centre and up


# ------------------------------------------------------------------------------------------------
# bpy-free


def test_auto_crop_is_on_for_footage_and_never_for_curves() -> None:
    footage = {"MOVIE_CLIP": True, "CAMERA": True, "IMAGE_SEQUENCE": False}
    assert [session_crop(kind, footage) for kind in ("MOVIE_CLIP", "CAMERA", "IMAGE_SEQUENCE")] == ["auto", "auto", "none"]
    assert session_crop("SHAPE_KEYS", {"SHAPE_KEYS": True}) == "none"  # curves are not pictures
    assert session_crop("MOVIE_CLIP", {"MOVIE_CLIP": False}) == "none"


def test_a_whole_frame_keeps_its_aspect_at_its_long_side() -> None:
    assert frame_size_at(1920, 1080, long_side=512) == (512, 288)
    assert frame_size_at(1080, 1920, long_side=512) == (288, 512)
    assert frame_size_at(1000, 1000, long_side=64) == (64, 64)
    assert frame_size_at(5000, 10, long_side=100) == (100, 1)  # never 0 px
    with pytest.raises(ValueError, match="positive"):
        frame_size_at(0, 10, long_side=64)


# ------------------------------------------------------------------------------------------------
# Inside bpy


@pytest.fixture(scope="module")
def addon(tmp_path_factory: pytest.TempPathFactory, offline_wheels: Path) -> Iterator[ModuleType]:
    package = install_addon(tmp_path_factory.mktemp("dist"), offline_wheels)
    yield package
    package.timer.shutdown()  # the add-on stays enabled (see the module docstring)


@pytest.fixture(scope="module")
def engine(contract_model_path: Path) -> Engine:
    return Engine(model_path=contract_model_path, max_batch=4)


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shape of every driver frame the server decodes (its own decoder, called through)."""
    shapes: list[tuple[int, ...]] = []
    decode = imaging.decode_driver_image

    def recording(buffer: Buffer, *, max_pixels: int, request_id: int | None = None) -> np.ndarray:
        image = decode(buffer, max_pixels=max_pixels, request_id=request_id)
        shapes.append(image.shape)
        return image

    monkeypatch.setattr(imaging, "decode_driver_image", recording)
    return shapes


@pytest.fixture
def model_inputs(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every image the server hands the model (its own batching, called through). The tests' model has random
    weights and draws much the same texture for any input, so what the model is given is what is checked."""
    images: list[np.ndarray] = []
    to_batch = imaging.to_engine_batch

    def recording(batch: list[np.ndarray]) -> np.ndarray:
        images.extend(image.copy() for image in batch)
        return to_batch(batch)

    monkeypatch.setattr(imaging, "to_engine_batch", recording)
    return images


@pytest.fixture
def server(engine: Engine, tmp_path: Path) -> Iterator[AvatarService]:
    service = AvatarService(engine=engine, config=ServiceConfig(bind=f"ipc://{tmp_path}/megalive.sock"))
    service.start()
    yield service
    service.stop()


@pytest.fixture
def scene(addon: ModuleType, server: AvatarService, tmp_path: Path) -> Iterator[bpy.types.Scene]:
    prefs = bpy.context.preferences.addons[addon.properties.ADDON_ID].preferences
    prefs.server_address, prefs.timeout_s, prefs.max_in_flight = server.bound_address, 2.0, 2
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end, scene.frame_step = 1, 4, 1
    scene.frame_set(1)
    settings = scene.megalive
    settings.driver_kind, settings.avatar_id, settings.image_name = "MOVIE_CLIP", AVATAR, "MegaLive Footage"
    settings.output_width = settings.output_height = 0
    settings.bake_dir = str(tmp_path / "bake")
    settings.target_object = None
    yield scene
    addon.timer.shutdown()
    settings.driver_kind, settings.movie_clip = "IMAGE_SEQUENCE", None


def the_crop_box(server: AvatarService) -> tuple[float, float, float]:
    """The box the server's auto-crop cut from the session's last frame (its one face tracker)."""
    ((cropper, _),) = server.worker.croppers.values()
    assert cropper._last_box is not None
    return cropper._last_box


def assert_found_the_face(box: tuple[float, float, float], truth: np.ndarray) -> None:
    expected = crop_box_from_landmarks(truth)  # the box the placed face's own landmarks give
    assert abs(box[0] - expected[0]) < 4 and abs(box[1] - expected[1]) < 4  # px
    assert abs(box[2] / expected[2] - 1) < 0.06


def decoded_frame(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frame = np.frombuffer(next(reader), np.uint8).reshape(meta["size"][1], meta["size"][0], 3).copy()
    reader.close()
    return frame


def test_a_wide_movie_clip_goes_whole_and_the_server_cuts_the_face(
    addon: ModuleType,
    server: AvatarService,
    engine: Engine,
    scene: bpy.types.Scene,
    received: list,
    model_inputs: list[np.ndarray],
    tmp_path: Path,
) -> None:
    frame, truth = face_frame(size=WIDE, face_width=FACE_WIDTH, centre=FACE_CENTRE)
    movie = write_movie(tmp_path / "wide.mp4", [frame] * 4)
    clip = bpy.data.movieclips.load(str(movie))
    settings = scene.megalive
    settings.movie_clip = clip
    assert settings.auto_crop_movie and settings.crop() == "auto"  # the default for movie clips

    assert bpy.ops.megalive.connect() == {"FINISHED"}
    assert bpy.ops.megalive.live() == {"FINISHED"}
    controller = addon.state.runtime.controller
    tick_until(addon, lambda: controller.figures.textures >= 1)
    assert received and set(received) == {(WIDE[1], WIDE[0], 3)}  # 270×480: its own aspect, not a square
    assert controller.frame_error == "" and controller.figures.frame_errors == 0
    box = the_crop_box(server)
    assert_found_the_face(box, truth)
    assert image_as_texture(bpy.data.images["MegaLive Footage"]).shape == (*engine.resolution, 4)
    # The model was driven by the face crop, not by the whole frame squeezed into a square (what a wide clip got before).
    sent = decoded_frame(movie)
    given = model_inputs[-1].astype(int)
    face_crop = crop_square(sent, box, output_size=engine.resolution[0]).astype(int)
    squeezed = imaging.resize_rgb(sent, engine.resolution).astype(int)
    assert np.abs(given - face_crop).mean() < 2 and np.abs(given - squeezed).mean() > 20

    bpy.ops.megalive.live()  # stop
    settings.auto_crop_movie = False  # frames that are face crops already: a wide one is centre-cut, never stretched
    received.clear()
    assert bpy.ops.megalive.live() == {"FINISHED"}
    tick_until(addon, lambda: controller.figures.textures >= 2)
    assert server.worker.croppers == {} and set(received) == {(WIDE[1], WIDE[0], 3)}
    centre_cut = imaging.resize_rgb(np.ascontiguousarray(sent[:, (WIDE[0] - WIDE[1]) // 2 :][:, : WIDE[1]]), engine.resolution)
    assert np.abs(model_inputs[-1].astype(int) - centre_cut.astype(int)).max() <= 1
    settings.auto_crop_movie = True


def test_a_phone_clip_with_rotation_metadata_arrives_upright(
    addon: ModuleType, server: AvatarService, scene: bpy.types.Scene, received: list, tmp_path: Path
) -> None:
    upright = (WIDE[1], WIDE[0])  # 270 wide, 480 tall, as the phone was held
    frame, truth = face_frame(size=upright, face_width=FACE_WIDTH, centre=(100.0, 300.0))
    movie = write_movie(tmp_path / "phone.mp4", [frame] * 4, display_rotation=90)  # stored 480×270, turned
    clip = bpy.data.movieclips.load(str(movie))
    assert tuple(clip.size) == upright  # Blender applies the rotation too: the clip and the driver agree
    scene.megalive.movie_clip = clip
    assert bpy.ops.megalive.connect() == {"FINISHED"}
    assert bpy.ops.megalive.live() == {"FINISHED"}
    controller = addon.state.runtime.controller
    tick_until(addon, lambda: controller.figures.textures >= 1)
    assert set(received) == {(upright[1], upright[0], 3)}
    assert_found_the_face(the_crop_box(server), truth)  # upright: where the face is in the frame as held


def test_a_take_that_starts_without_a_face_goes_on_live_and_in_the_bake(
    addon: ModuleType, server: AvatarService, scene: bpy.types.Scene, tmp_path: Path
) -> None:
    frame, _ = face_frame(size=WIDE, face_width=FACE_WIDTH, centre=FACE_CENTRE)
    movie = write_movie(tmp_path / "late.mp4", [grey_frame(WIDE)] * 2 + [frame] * 2)  # the performer steps in at frame 3
    scene.megalive.movie_clip = bpy.data.movieclips.load(str(movie))
    assert bpy.ops.megalive.connect() == {"FINISHED"}
    assert bpy.ops.megalive.live() == {"FINISHED"}
    controller = addon.state.runtime.controller
    tick_until(addon, lambda: controller.figures.frame_errors >= 1)
    assert controller.phase == "live" and "no face found" in controller.frame_error
    assert "no face found" in addon.state.status_line()  # the panel says so
    scene.frame_set(3)
    tick_until(addon, lambda: controller.figures.textures >= 1)  # the loop went on: the face is found
    assert controller.phase == "live" and controller.frame_error == ""
    assert bpy.ops.megalive.live() == {"FINISHED"}  # stop

    assert bpy.ops.megalive.bake() == {"FINISHED"}
    written = sorted((tmp_path / "bake").iterdir())
    assert [p.name for p in written] == [f"MegaLive_Footage_{f:06d}.png" for f in (1, 2, 3, 4)]
    with Image.open(written[0]) as first, Image.open(written[2]) as third:
        assert first.size == third.size and first.mode == "RGBA"
        assert np.asarray(first)[..., 3].max() == 0  # no face: a transparent stand-in, so the sequence has no hole
        assert np.asarray(third)[..., 3].max() > 0
    assert "no face found in 2 of them" in addon.state.runtime.message


def test_the_camera_render_keeps_the_scenes_aspect_with_auto_crop(addon: ModuleType, scene: bpy.types.Scene) -> None:
    settings = scene.megalive
    render = scene.render
    saved = (render.engine, render.resolution_x, render.resolution_y, render.pixel_aspect_x)
    render.engine = "CYCLES"  # renders headless on the CPU
    scene.cycles.samples = 1
    render.resolution_x, render.resolution_y, render.pixel_aspect_x = 1920, 1080, 1.0
    settings.driver_kind, settings.camera_driver_size = "CAMERA", 64
    made_camera = None
    if scene.camera is None:  # another module may have loaded a file without one
        made_camera = bpy.data.objects.new("Footage Camera", bpy.data.cameras.new("Footage Camera"))
        scene.collection.objects.link(made_camera)
        scene.camera = made_camera
    try:
        for auto, expected in ((True, (64, 36)), (False, (64, 64))):
            settings.auto_crop_camera = auto
            source = addon.sources.make_driver_source(scene)
            payload = source.payload(source.frame_key())
            assert pixels.png_size(payload.data) == expected
        assert (render.resolution_x, render.resolution_y) == (1920, 1080)  # the scene's settings are put back
    finally:
        render.engine, render.resolution_x, render.resolution_y, render.pixel_aspect_x = saved
        settings.auto_crop_camera = True
        if made_camera is not None:
            bpy.data.objects.remove(made_camera)


def test_a_server_that_cannot_crop_is_a_message_that_says_what_to_do(
    addon: ModuleType, server: AvatarService, scene: bpy.types.Scene, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    frame, _ = face_frame(size=WIDE, face_width=FACE_WIDTH, centre=FACE_CENTRE)
    scene.megalive.movie_clip = bpy.data.movieclips.load(str(write_movie(tmp_path / "take.mp4", [frame] * 2)))
    monkeypatch.setattr(server, "_can_crop", False)  # as a server without mediapipe answers
    assert bpy.ops.megalive.connect() == {"FINISHED"}
    with pytest.raises(RuntimeError, match="mediapipe is not installed.*untick Auto Crop"):
        bpy.ops.megalive.live()
    assert "untick Auto Crop" in addon.state.runtime.message and addon.state.runtime.controller.phase == "connected"
    scene.megalive.auto_crop_movie = False  # the way out the message names
    try:
        assert bpy.ops.megalive.live() == {"FINISHED"}
    finally:
        scene.megalive.auto_crop_movie = True
