"""The built extension inside the `bpy` module: install the zip, connect to a real server on
loopback, stream live textures through the timer function, bake, survive a server restart, refuse
bad input with a message, and unregister cleanly. Timers do not fire headless: the tests call the
timer function themselves."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import bpy
import numpy as np
import pytest
from PIL import Image

from client.client import AvatarClient, Texture
from client.protocol import Buffer, EncodedBuffer, raw_buffer_from_bytes
from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from tests.blender_addon.bpy_helpers import ADDON_MODULE, image_as_texture, install_addon, tick_until
from tests.blender_addon.conftest import write_test_movie
from tests.client.test_client import curve_service, make_curve_files

MODULE = ADDON_MODULE
FRAMES = 5


@pytest.fixture(scope="module")
def addon(tmp_path_factory: pytest.TempPathFactory, offline_wheels: Path) -> Iterator[ModuleType]:
    package = install_addon(tmp_path_factory.mktemp("dist"), offline_wheels)
    bake = package.bake  # the bpy layer's modules use the zip's copies, not the repository's
    assert bake.client_module.__name__ == f"{MODULE}.vendor.client.client"
    assert bake.shared_live.__name__ == f"{MODULE}.vendor.client.live" and bake.shared_live.client_module is bake.client_module
    yield package
    if MODULE in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_disable(module=MODULE)


@pytest.fixture(scope="module")
def engine(contract_model_path: Path) -> Engine:
    return Engine(model_path=contract_model_path, max_batch=4)


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each test's server comes back on this address: an ipc socket in a private folder, which no other
    process can take in between (a TCP port chosen first and bound later could be, and once was)."""
    return f"ipc://{tmp_path_factory.mktemp('server')}/megalive.sock"


@pytest.fixture
def server(engine: Engine, address: str) -> Iterator[AvatarService]:
    service = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def driver_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("driver")
    rng = np.random.default_rng(5)
    for i in range(FRAMES):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"take_{i:04d}.png")
    return folder


@pytest.fixture
def scene(addon: ModuleType, address: str, driver_folder: Path, tmp_path: Path) -> Iterator[bpy.types.Scene]:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.server_address, prefs.timeout_s, prefs.max_in_flight = address, 1.0, 2
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end, scene.frame_step = 1, FRAMES, 1
    scene.frame_set(1)
    settings = scene.megalive
    settings.driver_kind, settings.sequence_path, settings.avatar_id = "IMAGE_SEQUENCE", str(driver_folder), 1
    settings.image_name, settings.output_width, settings.output_height = "MegaLive", 0, 0
    settings.bake_dir = str(tmp_path / "bake")
    settings.target_object = None
    yield scene
    addon.timer.shutdown()


def server_texture(address: str, driver_file: Path, avatar: int) -> np.ndarray:
    """What the server renders for this driver file (a separate client, the same bytes)."""
    return server_texture_of(address, EncodedBuffer(codec="png", data=memoryview(driver_file.read_bytes())), avatar)


def server_texture_of(address: str, payload: Buffer, avatar: int) -> np.ndarray:
    """What the server renders for this driver frame (a separate client)."""
    with AvatarClient(address=address, timeout_s=5.0) as client:
        session = client.open(avatar=avatar)
        seq = client.send_frame(session, payload)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for event in client.poll(timeout_ms=50):
                if isinstance(event, Texture) and event.seq == seq:
                    return event.buffer.array().copy()
    raise AssertionError("no texture from the server")


def test_live_texture_equals_the_servers_and_survives_a_restart(
    addon: ModuleType,
    server: AvatarService,
    engine: Engine,
    scene: bpy.types.Scene,
    address: str,
    driver_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert bpy.ops.megalive.connect() == {"FINISHED"}
    controller = addon.state.runtime.controller
    assert [a.name for a in controller.avatars] == ["ada", "bo", "cy"]
    assert bpy.app.timers.is_registered(addon.timer.live_tick)
    assert bpy.ops.megalive.live() == {"FINISHED"}
    scene.frame_set(3)  # third file of the sequence
    tick_until(addon, lambda: controller.figures.textures >= 1)
    image = bpy.data.images["MegaLive"]
    assert tuple(image.size) == (32, 32) and image.is_float
    expected = server_texture(address, driver_folder / "take_0002.png", avatar=1) / 255.0
    assert np.abs(image_as_texture(image) - expected).max() <= 1.0 / 255.0 + 1e-6

    # Structural: nothing that waits for a reply may run on the main thread once live.
    main = threading.main_thread()
    for name in ("hello", "reconnect", "open", "avatars", "stats", "_request", "_request_connected"):
        original = getattr(controller.client, name)

        def guarded(*args, _original=original, _name=name, **kwargs):
            assert threading.current_thread() is not main, f"{_name} called from the timer on the main thread"
            return _original(*args, **kwargs)

        monkeypatch.setattr(controller.client, name, guarded)

    server.stop()
    tick_until(addon, lambda: controller.phase in ("gone", "reconnecting"), timeout_s=15)
    assert addon.state.status_line().startswith(("Server gone", "Reconnecting"))
    keep_ticking_until = time.monotonic() + 1.5  # through back-off and a reconnect attempt against no server
    tick_until(addon, lambda: time.monotonic() >= keep_ticking_until)
    # No wall-clock assertion (shared machines): the guards above prove no waiting call ran in the tick;
    # bench/live_tick_server_gone.py measures the tick's cost.

    restarted = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    restarted.start()
    try:
        textures = controller.figures.textures
        tick_until(addon, lambda: controller.phase == "live" and controller.figures.textures > textures, timeout_s=20)
        assert controller.figures.reconnects >= 1 and addon.state.status_line().startswith("Live")
    finally:
        addon.timer.shutdown()
        restarted.stop()


def test_bake_writes_the_servers_frames_and_wires_the_material(
    addon: ModuleType, server: AvatarService, scene: bpy.types.Scene, address: str, driver_folder: Path, tmp_path: Path
) -> None:
    assert bpy.ops.megalive.create_plane() == {"FINISHED"}
    target = scene.megalive.target_object
    assert bpy.ops.megalive.bake() == {"FINISHED"}
    written = sorted((tmp_path / "bake").iterdir())
    assert [p.name for p in written] == [f"MegaLive_{f:06d}.png" for f in range(1, FRAMES + 1)]
    for frame, path in enumerate(written):
        with Image.open(path) as baked:
            assert baked.mode == "RGBA"
            expected = server_texture(address, driver_folder / f"take_{frame:04d}.png", avatar=1)
            assert np.abs(np.asarray(baked).astype(int) - expected.astype(int)).max() <= 1
    node = target.active_material.node_tree.nodes[addon.material.MATERIAL_NODE_NAME]
    assert node.image.source == "SEQUENCE" and node.image_user.frame_duration == FRAMES
    assert node.image_user.frame_start == 1 and node.image_user.frame_offset == 0


def test_a_bake_on_a_server_with_a_signing_key_writes_c2pa_signed_frames(
    addon: ModuleType, engine: Engine, address: str, scene: bpy.types.Scene, tmp_path: Path
) -> None:
    pytest.importorskip("c2pa")
    from server.manifest import make_signing_keys, read_manifest

    signing = make_signing_keys(tmp_path / "keys")
    service = AvatarService(engine=engine, config=ServiceConfig(bind=address, signing=signing))
    service.start()
    try:
        assert bpy.ops.megalive.bake() == {"FINISHED"}
    finally:
        service.stop()
    written = sorted((tmp_path / "bake").iterdir())
    assert len(written) == FRAMES and addon.state.runtime.message.endswith("each with a C2PA manifest")
    for path in written:
        report = read_manifest(path)  # the server's own bytes, written unchanged: the manifest checks out
        assert report.valid and report.avatars == (
            {"id": 1, "name": engine.avatar_names[1], "consent_sha256": "synthetic avatar, no person"},
        )
        with Image.open(path) as baked:
            assert baked.mode == "RGBA" and baked.size == (32, 32)


def test_a_cancelled_bake_keeps_the_frames_written(
    addon: ModuleType, server: AvatarService, scene: bpy.types.Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_step = addon.bake.BakeJob.step

    def step_then_cancel_after_two(job) -> None:
        original_step(job)
        if len(job.written) == 2:
            addon.state.runtime.bake_cancel = True  # what Esc or the Cancel button does

    monkeypatch.setattr(addon.bake.BakeJob, "step", step_then_cancel_after_two)
    assert bpy.ops.megalive.bake() == {"CANCELLED"}
    assert sorted(p.name for p in (tmp_path / "bake").iterdir()) == ["MegaLive_000001.png", "MegaLive_000002.png"]
    assert "cancelled" in addon.state.status_line()


def expect_error(operator, match: str) -> None:
    with pytest.raises(RuntimeError, match=match) as raised:  # pytest-timeout catches a hang
        operator()
    assert "Traceback" not in str(raised.value)


def test_bad_input_gets_a_message_not_a_traceback(
    addon: ModuleType,
    server: AvatarService,
    scene: bpy.types.Scene,
    address: str,
    driver_folder: Path,
    tmp_path: Path,
    future_protocol_server: str,
) -> None:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    settings = scene.megalive
    prefs.server_address = future_protocol_server
    expect_error(bpy.ops.megalive.connect, "another protocol")
    assert "another protocol" in addon.state.status_line()
    for wrong in (f"ipc://{tmp_path}/nobody-listens.sock", "not an address"):
        prefs.server_address = wrong
        expect_error(bpy.ops.megalive.connect, "cannot reach|bad server address")
        assert addon.state.status_line().startswith(("cannot reach", "bad server address", "Disconnected"))
        assert addon.state.runtime.controller is None
    prefs.server_address = address

    assert bpy.ops.megalive.connect() == {"FINISHED"}
    settings.avatar_id = 7  # e.g. saved in a .blend against another model
    expect_error(bpy.ops.megalive.live, "does not exist")
    assert "does not exist" in addon.state.status_line()
    expect_error(bpy.ops.megalive.bake, "does not exist")
    settings.avatar_id = 0

    settings.sequence_path = str(tmp_path / "no-such-take")
    expect_error(bpy.ops.megalive.live, "no such folder")
    expect_error(bpy.ops.megalive.bake, "no such folder")

    broken = tmp_path / "broken-take"
    broken.mkdir()
    for i in range(FRAMES):
        source = driver_folder / f"take_{i:04d}.png"
        (broken / source.name).write_bytes(source.read_bytes() if i != 2 else b"not a png at all")
    settings.sequence_path = str(broken)
    expect_error(bpy.ops.megalive.bake, "Bake stopped")
    assert sorted(p.name for p in (tmp_path / "bake").iterdir()) == ["MegaLive_000001.png", "MegaLive_000002.png"]
    assert bpy.ops.megalive.live() == {"FINISHED"}
    scene.frame_set(3)
    controller = addon.state.runtime.controller
    tick_until(addon, lambda: controller.figures.frame_errors >= 1)
    assert "frame error" in addon.state.status_line()

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings.sequence_path = str(driver_folder)
    settings.bake_dir = str(blocker / "bake")
    expect_error(bpy.ops.megalive.bake, "cannot write")
    assert blocker.read_text() == "not a folder"


MOVIE_FRAMES = 8


@pytest.fixture(scope="module")
def movie_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_movie(tmp_path_factory.mktemp("movie") / "take.mp4", frames=MOVIE_FRAMES)


def decoded_frame(movie_file: Path, index: int) -> Buffer:
    """Frame ``index`` of the movie as ffmpeg decodes it (RGB24), as the driver frame the server gets."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(movie_file))
    meta = next(reader)
    frames = [bytes(frame) for frame in reader]
    width, height = meta["size"]
    return raw_buffer_from_bytes(frames[index], dtype="|u1", shape=(height, width, 3))


def test_movie_clip_drives_live_and_bake(
    addon: ModuleType, server: AvatarService, scene: bpy.types.Scene, address: str, movie_file: Path, tmp_path: Path
) -> None:
    clip = bpy.data.movieclips.load(str(movie_file))
    clip.frame_start = 3  # scene frame 3 shows the clip's first frame
    settings = scene.megalive
    settings.driver_kind, settings.movie_clip, settings.avatar_id = "MOVIE_CLIP", clip, 2
    settings.auto_crop_movie = False  # flat colours, no face: frame by frame as decoded (test_footage.py: Auto Crop)
    try:
        assert bpy.ops.megalive.connect() == {"FINISHED"}
        scene.frame_set(7)  # clip frame 5: index 4
        assert bpy.ops.megalive.live() == {"FINISHED"}
        controller = addon.state.runtime.controller
        tick_until(addon, lambda: controller.figures.textures >= 1)  # decoding runs on the decoder thread
        expected = server_texture_of(address, decoded_frame(movie_file, 4), avatar=2) / 255.0
        assert np.abs(image_as_texture(bpy.data.images["MegaLive"]) - expected).max() <= 1.0 / 255.0 + 1e-6
        source = addon.state.runtime.source
        assert bpy.ops.megalive.live() == {"FINISHED"}  # stop: the decoder thread ends
        assert addon.state.runtime.source is None and not source.frames._thread.is_alive()

        scene.frame_start, scene.frame_end = 6, 8  # clip indices 3, 4, 5
        assert bpy.ops.megalive.bake() == {"FINISHED"}
        written = sorted((tmp_path / "bake").iterdir())
        assert [p.name for p in written] == [f"MegaLive_{f:06d}.png" for f in (6, 7, 8)]
        for index, path in zip((3, 4, 5), written):
            with Image.open(path) as baked:
                expected = server_texture_of(address, decoded_frame(movie_file, index), avatar=2)
                assert np.abs(np.asarray(baked).astype(int) - expected.astype(int)).max() <= 1

        broken = tmp_path / "broken.mp4"
        broken.write_bytes(movie_file.read_bytes())
        broken_clip = bpy.data.movieclips.load(str(broken))
        broken.write_bytes(b"not a movie at all" * 64)
        settings.movie_clip = broken_clip
        settings.bake_dir = str(tmp_path / "bake-broken")
        expect_error(bpy.ops.megalive.live, "cannot read movie broken.mp4")
        assert "cannot read movie broken.mp4" in addon.state.runtime.message  # the panel shows it
        expect_error(bpy.ops.megalive.bake, "cannot read movie broken.mp4")
        assert not (tmp_path / "bake-broken").exists()
        assert addon.state.runtime.controller.phase == "connected"
        settings.movie_clip = clip  # still usable
        assert bpy.ops.megalive.live() == {"FINISHED"}
        tick_until(addon, lambda: addon.state.runtime.controller.figures.textures >= 1)
    finally:
        settings.driver_kind, settings.movie_clip, settings.auto_crop_movie = "IMAGE_SEQUENCE", None, True
        addon.timer.shutdown()


def test_the_zip_ships_an_ffmpeg_that_runs(addon: ModuleType) -> None:
    """Blender installs the zip's imageio-ffmpeg wheel without Unix modes; the movie module restores the execute bit.
    (In this process the venv's imageio_ffmpeg comes first on sys.path, so the installed copy is checked directly.)"""
    import subprocess
    from types import SimpleNamespace

    installed = [Path(p) / "imageio_ffmpeg" for p in sys.path if "extensions" in p and (Path(p) / "imageio_ffmpeg").is_dir()]
    assert installed, "the extension's wheels did not install imageio-ffmpeg"
    movie = sys.modules[f"{MODULE}.movie"]
    movie._make_bundled_ffmpeg_executable(SimpleNamespace(__file__=str(installed[0] / "__init__.py")))
    (exe,) = (installed[0] / "binaries").glob("ffmpeg-*")
    assert subprocess.run([str(exe), "-version"], capture_output=True, timeout=10).returncode == 0


def test_the_shipped_models_thumbnails_become_panel_icons(addon: ModuleType, scene: bpy.types.Scene) -> None:
    shipped = Path(__file__).resolve().parents[2] / "assets" / "default" / "student.onnx"
    service = AvatarService(engine=Engine(model_path=shipped, max_batch=1), config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.server_address = service.start()
    try:
        assert bpy.ops.megalive.connect() == {"FINISHED"}
        assert sorted(addon.state.runtime.thumbnail_icons) == list(range(8))
        # Headless Blender allocates no icon ids (no UI draws), so check the previews' pixels instead.
        thumbnails = np.load(shipped.with_suffix(".thumbs.npy"))  # 8×96×96×3 uint8
        for avatar in range(8):
            preview = addon.state.runtime.previews[f"avatar-{avatar}"]
            assert tuple(preview.image_size) == (96, 96)
            stored = np.empty(96 * 96 * 4, np.float32)
            preview.image_pixels_float.foreach_get(stored)
            rgb = stored.reshape(96, 96, 4)[::-1, :, :3] * 255  # Blender rows are bottom-up
            assert np.abs(rgb - thumbnails[avatar]).max() <= 1.0
    finally:
        addon.timer.shutdown()
        service.stop()


def test_curve_key_preferences_reach_live_and_bake_and_a_bad_key_file_is_a_message(
    addon: ModuleType, engine: Engine, scene: bpy.types.Scene, tmp_path: Path
) -> None:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    for name, label in (("server_public_key", "Server Public Key"), ("client_secret_key", "Client Secret Key")):
        rna = prefs.bl_rna.properties[name]
        assert rna.name == label and rna.subtype == "FILE_PATH" and getattr(prefs, name) == ""  # empty: no CURVE
    files = make_curve_files(tmp_path / "keys")
    service = curve_service(engine, files)
    prefs.server_address = service.start()
    try:
        prefs.server_public_key, prefs.client_secret_key = str(files.server_public), str(tmp_path / "nowhere.key_secret")
        expect_error(bpy.ops.megalive.connect, "nowhere.key_secret: no such file")
        assert "nowhere.key_secret: no such file" in addon.state.status_line() and addon.state.runtime.controller is None
        expect_error(bpy.ops.megalive.bake, "nowhere.key_secret: no such file")

        prefs.client_secret_key = str(files.client_secret)
        assert bpy.ops.megalive.connect() == {"FINISHED"}
        controller = addon.state.runtime.controller
        assert controller.client.curve is not None and [a.name for a in controller.avatars] == ["ada", "bo", "cy"]
        assert bpy.ops.megalive.live() == {"FINISHED"}
        tick_until(addon, lambda: controller.figures.textures >= 1)
        assert bpy.ops.megalive.bake() == {"FINISHED"}  # the bake's own client uses the keys too
        assert len(list((tmp_path / "bake").iterdir())) == FRAMES
        addon.timer.shutdown()

        prefs.server_public_key = prefs.client_secret_key = ""
        expect_error(bpy.ops.megalive.connect, "require(s)? CURVE")
    finally:
        prefs.server_public_key = prefs.client_secret_key = ""
        addon.timer.shutdown()
        service.stop()


def test_enroll_turns_a_portrait_into_an_avatar_without_waiting_and_refuses_without_consent(
    addon: ModuleType, scene: bpy.types.Scene, address: str, enrollable_model_path: Path, tmp_path: Path
) -> None:
    pytest.importorskip("mediapipe")
    photo = tmp_path / "me.png"
    Image.fromarray(pytest.importorskip("skimage.data").astronaut()).save(photo)
    engine = Engine(model_path=enrollable_model_path, bank_path=tmp_path / "bank.avatars.npz", warmup=False)
    service = AvatarService(engine=engine, config=ServiceConfig(bind=address))
    service.start()
    try:
        assert bpy.ops.megalive.connect() == {"FINISHED"}
        settings, runtime = scene.megalive, addon.state.runtime
        picked = {"directory": str(tmp_path), "files": [{"name": photo.name}]}
        settings.enroll_name, settings.enroll_consent = "", False
        with pytest.raises(RuntimeError, match="type the avatar's name first"):  # bpy.ops raises what the operator reports
            bpy.ops.megalive.enroll(**picked)
        settings.enroll_name = "Eileen"
        with pytest.raises(RuntimeError, match="tick the consent box"):
            bpy.ops.megalive.enroll(**picked)
        assert runtime.enrolling is None  # nothing was sent
        settings.enroll_consent = True
        assert bpy.ops.megalive.enroll(**picked) == {"FINISHED"}  # returns at once: the job runs on its own thread
        job = runtime.enrolling
        assert job.request.consent == addon.properties.consent_statement("Eileen") and "Eileen" in job.request.consent
        assert job.wait(60)
        assert addon.operators.enroll_tick() is None  # the timer's last call: the outcome shown, the avatars reloaded
        assert runtime.message.startswith("enrolled avatar 3 'Eileen'")
        assert [a.name for a in runtime.controller.avatars][-1] == "Eileen" and 3 in runtime.thumbnail_icons
        assert engine.avatar_records()[3].consent.statement == job.request.consent  # stored word for word
    finally:
        addon.timer.shutdown()
        service.stop()


def test_an_enrolled_avatar_is_listed_at_once_while_it_refines_and_stop_refining_keeps_it(
    addon: ModuleType, scene: bpy.types.Scene, address: str, refinable_model_path: Path, tmp_path: Path
) -> None:
    import sys
    import time

    from server.refinement import RefinementJobs

    pytest.importorskip("mediapipe")
    photo = tmp_path / "me.png"
    Image.fromarray(pytest.importorskip("skimage.data").astronaut()).save(photo)
    engine = Engine(model_path=refinable_model_path, bank_path=tmp_path / "bank.avatars.npz", warmup=False)
    service = AvatarService(engine=engine, config=ServiceConfig(bind=address, refine_steps=1000))
    service.refinement = RefinementJobs(card=engine.card, command=(sys.executable, "-m", "models.cli", "enroll", "--allow-missing-nets"))
    service.start()
    try:
        assert bpy.ops.megalive.connect() == {"FINISHED"}
        settings, runtime = scene.megalive, addon.state.runtime
        settings.enroll_name, settings.enroll_consent = "Eileen", True
        assert bpy.ops.megalive.enroll(directory=str(tmp_path), files=[{"name": photo.name}]) == {"FINISHED"}
        job = runtime.enrolling
        deadline = time.monotonic() + 120
        while "step" not in job.describe() and time.monotonic() < deadline:  # the server's job has started its steps
            time.sleep(0.2)
        assert job.state == "refining" and job.result is not None
        assert addon.operators.enroll_tick() is not None  # keeps ticking while it refines ...
        assert [a.name for a in runtime.controller.avatars][-1] == "Eileen" and 3 in runtime.thumbnail_icons  # ... listed already
        assert "refining: step" in runtime.message
        assert bpy.ops.megalive.enroll_cancel() == {"FINISHED"}
        assert job.wait(30) and job.state == "enrolled"
        assert addon.operators.enroll_tick() is None
        assert "refinement cancelled: the one-shot avatar stays" in runtime.message
        assert engine.avatar_names[-1] == "Eileen"
    finally:
        addon.timer.shutdown()
        service.stop()


def test_file_load_and_unregister_stop_everything(addon: ModuleType, server: AvatarService, scene: bpy.types.Scene) -> None:
    assert bpy.ops.megalive.connect() == {"FINISHED"}
    assert bpy.ops.megalive.live() == {"FINISHED"}
    controller = addon.state.runtime.controller
    tick_until(addon, lambda: controller.figures.textures >= 1)
    bpy.ops.wm.read_homefile(use_empty=True)  # runs load_pre
    assert addon.state.runtime.controller is None and not controller.client.connected
    assert not bpy.app.timers.is_registered(addon.timer.live_tick)

    assert bpy.ops.megalive.connect() == {"FINISHED"}
    controller = addon.state.runtime.controller
    assert bpy.ops.preferences.addon_disable(module=MODULE) == {"FINISHED"}
    assert not bpy.app.timers.is_registered(addon.timer.live_tick)
    assert not controller.client.connected and addon.state.runtime.controller is None
    assert addon.registration.on_load_pre not in bpy.app.handlers.load_pre
    assert not hasattr(bpy.types.Scene, "megalive")
