"""The "Shape keys (ARKit names)" driver: the bpy-free mapping (blender_addon/shape_keys.py: names,
clamping, head angles, payload layout), then inside the `bpy` module the installed extension's
source (payload per frame, head bone and object), live against a real server on a model with an
arkit driver (the Blender image equals what the engine renders for those curves) and the bake.

Test order: this module installs the extension itself (test_extension.py disables it in its last
test) and leaves it enabled at the end, so it never disables the add-on under another module."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import bpy
import numpy as np
import pytest
from PIL import Image

from blender_addon import shape_keys
from blender_addon.vocabulary import session_stabilise, wire_driver_kind
from client.protocol import RawBuffer
from contract.arkit import ARKIT_CURVES
from server import imaging
from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from tests.blender_addon.bpy_helpers import ADDON_MODULE, image_as_texture, install_addon, tick_until

MODULE = ADDON_MODULE
AVATAR = 2


def index(name: str) -> int:
    return ARKIT_CURVES.index(name)


# ------------------------------------------------------------------------------------------------
# bpy-free


def test_names_match_exactly_ignoring_case_and_after_a_prefix() -> None:
    jaw = index("jawOpen")
    assert shape_keys.match_blendshape("jawOpen") == (jaw, shape_keys.EXACT)
    assert shape_keys.match_blendshape("JawOpen") == (jaw, shape_keys.CASE)
    assert shape_keys.match_blendshape("JAWOPEN") == (jaw, shape_keys.CASE)
    assert shape_keys.match_blendshape("ARKit_jawOpen") == (jaw, shape_keys.SEPARATED)
    assert shape_keys.match_blendshape("CC_Base.JawOpen") == (jaw, shape_keys.SEPARATED)
    assert shape_keys.match_blendshape("Face jawOpen") == (jaw, shape_keys.SEPARATED)
    assert shape_keys.match_blendshape("HeadjawOpen") is None  # no separator: only with the prefix set
    assert shape_keys.match_blendshape("HeadjawOpen", prefix="head") == (jaw, shape_keys.USER_PREFIX)
    for unknown in ("Basis", "jawOpen2", "jawOpen.001", "open", "", "_", "ARKit_", "eyeBlink_L"):
        assert shape_keys.match_blendshape(unknown) is None, unknown
    assert shape_keys.match_blendshape("mouthLeft") == (index("mouthLeft"), shape_keys.EXACT)  # not jawLeft
    assert shape_keys.match_names(["Basis", "ARKit_eyeBlinkLeft", "Smile", "mouthSmileLeft"]) == {
        "ARKit_eyeBlinkLeft": "eyeBlinkLeft",
        "mouthSmileLeft": "mouthSmileLeft",
    }


def test_the_best_match_wins_when_keys_name_one_blendshape() -> None:
    names = ["ARKit_jawOpen", "JawOpen", "jawOpen", "other_jawOpen"]
    curves = shape_keys.arkit_curves(names, [0.1, 0.2, 0.3, 0.4])
    assert curves[index("jawOpen")] == pytest.approx(0.3)  # the exact name
    assert shape_keys.arkit_curves(names[:2], [0.1, 0.2])[index("jawOpen")] == pytest.approx(0.2)  # case beats prefix
    assert shape_keys.arkit_curves(["a_jawOpen", "b_jawOpen"], [0.1, 0.2])[index("jawOpen")] == pytest.approx(0.1)  # first


def test_values_are_clamped_unknown_ignored_and_the_head_placed() -> None:
    curves = shape_keys.curves_from_mapping(
        {"Basis": 1.0, "jawOpen": 1.7, "mouthSmileLeft": -0.3, "eyeBlinkLeft": 0.6, "tongueOut": float("nan"), "custom": 0.5},
        head=(0.3, -0.2, 0.1),
    )
    assert curves.dtype == np.float32 and curves.shape == (61,) == (len(ARKIT_CURVES),)
    expected = np.zeros(61, np.float32)
    expected[index("jawOpen")], expected[index("eyeBlinkLeft")] = 1.0, 0.6
    expected[index("headYaw")], expected[index("headPitch")], expected[index("headRoll")] = 0.3, -0.2, 0.1
    np.testing.assert_array_equal(curves, expected)  # eyes 0; NaN and below 0 -> 0; above 1 -> 1
    with pytest.raises(ValueError):
        shape_keys.arkit_curves(["jawOpen"], [0.1, 0.2])


def test_payload_is_61_little_endian_float32_in_protocol_order() -> None:
    curves = np.arange(61, dtype=np.float32) / 100
    buffer = shape_keys.curves_buffer(curves)
    assert isinstance(buffer, RawBuffer) and buffer.dtype == "<f4" and buffer.shape == (61,)
    assert bytes(buffer.data) == np.asarray(curves, dtype="<f4").tobytes() and len(buffer.data) == 61 * 4
    curves[0] = 9.0  # the buffer is a copy: the source reuses its array
    assert buffer.array()[0] == 0.0
    assert shape_keys.CURVES is ARKIT_CURVES  # contract's list, not a copy of it
    assert (shape_keys.HEAD_YAW, shape_keys.HEAD_PITCH, shape_keys.HEAD_ROLL) == (52, 53, 54)
    with pytest.raises(ValueError):
        shape_keys.curves_buffer(np.zeros(58, np.float32))


def rot(axis: str, angle: float) -> np.ndarray:
    """Blender's right-handed rotation about +X, +Y or +Z (a column vector is rotated by R @ v)."""
    c, s = math.cos(angle), math.sin(angle)
    return {
        "X": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "Y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "Z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def test_head_angles_of_known_rotations_and_their_signs() -> None:
    nose, top = np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])  # the head faces -Y, +Z up
    assert shape_keys.head_angles(np.eye(3)) == (0.0, 0.0, 0.0)
    yaw, pitch, roll = shape_keys.head_angles(rot("Z", 0.3))
    assert (yaw, pitch, roll) == pytest.approx((0.3, 0.0, 0.0))
    assert (rot("Z", 0.3) @ nose)[0] > 0  # +yaw: the nose turns to the subject's left (+X)
    assert shape_keys.head_angles(rot("X", 0.2)) == pytest.approx((0.0, -0.2, 0.0))
    assert (rot("X", -0.2) @ nose)[2] > 0  # +pitch (a -X rotation): the nose lifts
    assert shape_keys.head_angles(rot("Y", 0.1)) == pytest.approx((0.0, 0.0, -0.1))
    assert (rot("Y", -0.1) @ top)[0] < 0  # +roll (a -Y rotation): the top tilts to the subject's right (-X)
    # Combined: roll · yaw · pitch about the head's forward, up and right axes, pitch first.
    combined = rot("Y", -0.15) @ rot("Z", 0.4) @ rot("X", 0.25)
    assert shape_keys.head_angles(combined) == pytest.approx((0.4, -0.25, 0.15))
    rng = np.random.default_rng(3)
    for yaw, pitch, roll in rng.uniform(-1.4, 1.4, (50, 3)):
        matrix = shape_keys.rotation_from_angles(yaw, pitch, roll)
        assert np.allclose(matrix @ matrix.T, np.eye(3)) and np.linalg.det(matrix) == pytest.approx(1.0)
        assert shape_keys.head_angles(matrix) == pytest.approx((yaw, pitch, roll), abs=1e-9)
    assert shape_keys.head_angles(shape_keys.rotation_from_angles(math.pi / 2, 0.3, 0.0)) == pytest.approx((math.pi / 2, 0.3, 0.0))


def test_capture_sessions_open_as_arkit_with_the_stabilise_choice() -> None:
    assert wire_driver_kind("SHAPE_KEYS") == "arkit"
    assert {wire_driver_kind(kind) for kind in ("IMAGE_SEQUENCE", "MOVIE_CLIP", "CAMERA")} == {"image"}
    assert session_stabilise("arkit", False) is False and session_stabilise("arkit", True) is None
    assert session_stabilise("image", False) is None  # image sessions keep the server's defaults


# ------------------------------------------------------------------------------------------------
# Inside bpy: the installed extension


@pytest.fixture(scope="module")
def addon(tmp_path_factory: pytest.TempPathFactory, offline_wheels: Path) -> Iterator[ModuleType]:
    package = install_addon(tmp_path_factory.mktemp("dist"), offline_wheels)
    assert package.shape_keys.protocol.__name__ == f"{MODULE}.vendor.client.protocol"  # the zip's protocol copy
    assert package.shape_keys.arkit.__name__ == f"{MODULE}.vendor.contract.arkit"  # and the zip's contract copy
    yield package
    package.timer.shutdown()  # the add-on stays enabled (see the module docstring)


@pytest.fixture
def face(addon: ModuleType) -> Iterator[SimpleNamespace]:
    """A mesh with shape keys (jawOpen keyed 0 -> 1.5 over frames 1..5), a head empty keyed 0 -> 0.3 rad
    about Z, and an armature whose one bone points up (+Z)."""
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end, scene.frame_step = 1, 5, 1
    scene.render.fps, scene.render.fps_base = 24, 1.0
    mesh = bpy.data.meshes.new("ARKit Face")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 0, 1)], [], [(0, 1, 2)])
    obj = bpy.data.objects.new("ARKit Face", mesh)
    scene.collection.objects.link(obj)
    obj.shape_key_add(name="Basis")
    keys = {
        name: obj.shape_key_add(name=name, from_mix=False)
        for name in ("jawOpen", "mouthSmileLeft", "eyeBlinkLeft", "ARKit_browInnerUp", "Unrelated", "cheekPuff")
    }
    jaw = keys["jawOpen"]
    jaw.slider_max = 2.0  # Blender allows more than 1; the driver clamps
    jaw.value = 0.0
    jaw.keyframe_insert("value", frame=1)
    jaw.value = 1.5
    jaw.keyframe_insert("value", frame=5)
    keys["mouthSmileLeft"].value = 0.25
    keys["eyeBlinkLeft"].value = 0.6
    keys["ARKit_browInnerUp"].value = 0.4
    keys["Unrelated"].value = 0.9
    keys["cheekPuff"].value = 0.7
    keys["cheekPuff"].mute = True  # a muted key does nothing to the mesh: 0

    head = bpy.data.objects.new("ARKit Head", None)
    scene.collection.objects.link(head)
    head.rotation_euler = (0.0, 0.0, 0.0)
    head.keyframe_insert("rotation_euler", frame=1)
    head.rotation_euler = (0.0, 0.0, 0.3)
    head.keyframe_insert("rotation_euler", frame=5)

    armature_data = bpy.data.armatures.new("ARKit Rig")
    rig = bpy.data.objects.new("ARKit Rig", armature_data)
    scene.collection.objects.link(rig)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    bone = armature_data.edit_bones.new("head")
    bone.head, bone.tail = (0.0, 0.0, 1.5), (0.0, 0.0, 1.8)  # pointing up, roll 0: bone Y = +Z, bone Z = -Y
    bpy.ops.object.mode_set(mode="OBJECT")

    settings = scene.megalive
    settings.driver_kind, settings.shape_key_object, settings.shape_key_prefix = "SHAPE_KEYS", obj, ""
    settings.head_object, settings.head_bone, settings.stabilise = head, "", False
    settings.avatar_id, settings.image_name, settings.output_width, settings.output_height = AVATAR, "MegaLive ARKit", 0, 0
    settings.target_object = None
    scene.frame_set(1)
    yield SimpleNamespace(scene=scene, mesh=obj, keys=keys, head=head, rig=rig)
    addon.timer.shutdown()
    settings.driver_kind, settings.shape_key_object, settings.head_object, settings.head_bone = "IMAGE_SEQUENCE", None, None, ""
    settings.stabilise = True
    for thing in (obj, head, rig):
        bpy.data.objects.remove(thing)


def expected_curves(face: SimpleNamespace, frame: int) -> np.ndarray:
    """The curves the driver should send at ``frame``, from Blender's own values (not the add-on's code)."""
    scene = face.scene
    current = scene.frame_current
    scene.frame_set(frame)
    curves = np.zeros(61, np.float32)
    curves[index("jawOpen")] = min(face.keys["jawOpen"].value, 1.0)
    curves[index("mouthSmileLeft")] = face.keys["mouthSmileLeft"].value
    curves[index("eyeBlinkLeft")] = face.keys["eyeBlinkLeft"].value
    curves[index("browInnerUp")] = face.keys["ARKit_browInnerUp"].value
    curves[index("headYaw")] = face.head.rotation_euler.z  # a Z rotation is yaw, same sign
    scene.frame_set(current)
    return curves


def payload_now(source) -> np.ndarray:
    key = source.frame_key()
    return source.payload(key).array().copy()


def test_the_source_reads_shape_keys_and_head_per_frame(addon: ModuleType, face: SimpleNamespace) -> None:
    source = addon.sources.make_driver_source(face.scene)
    assert isinstance(source, addon.sources.ShapeKeySource)
    face.scene.frame_set(1)
    first = payload_now(source)
    np.testing.assert_allclose(first, expected_curves(face, 1), atol=1e-6)
    assert first[index("jawOpen")] == 0.0 and first[index("headYaw")] == 0.0
    assert first[index("mouthSmileLeft")] == pytest.approx(0.25) and first[index("browInnerUp")] == pytest.approx(0.4)
    assert first[index("cheekPuff")] == 0.0  # muted

    face.scene.frame_set(5)
    last = payload_now(source)
    np.testing.assert_allclose(last, expected_curves(face, 5), atol=1e-6)
    assert last[index("jawOpen")] == 1.0  # 1.5 on the slider, clamped
    assert last[index("headYaw")] == pytest.approx(0.3) and last[index("headPitch")] == pytest.approx(0.0, abs=1e-7)

    key = source.frame_key()
    assert source.frame_key() == key  # nothing changed: the same frame
    face.keys["mouthSmileLeft"].value = 0.5  # an edit without a frame change is a new frame
    assert source.frame_key() != key
    assert payload_now(source)[index("mouthSmileLeft")] == pytest.approx(0.5)

    # The bake asks for scene frames: payload moves the scene there, close() moves it back.
    face.scene.frame_set(4)
    np.testing.assert_allclose(source.payload(2).array(), expected_curves(face, 2), atol=1e-6)
    assert face.scene.frame_current == 2
    source.close()
    assert face.scene.frame_current == 4


def test_a_head_bone_turns_relative_to_its_rest_pose(addon: ModuleType, face: SimpleNamespace) -> None:
    settings = face.scene.megalive
    settings.head_object, settings.head_bone = face.rig, "head"
    pose_bone = face.rig.pose.bones["head"]
    pose_bone.rotation_mode = "XYZ"
    source = addon.sources.make_driver_source(face.scene)
    pose_bone.rotation_euler = (0.0, 0.3, 0.0)  # about the bone's own axis (up): yaw
    bpy.context.view_layer.update()
    curves = payload_now(source)
    assert curves[index("headYaw")] == pytest.approx(0.3, abs=1e-6)
    assert curves[index("headPitch")] == pytest.approx(0.0, abs=1e-6) and curves[index("headRoll")] == pytest.approx(0.0, abs=1e-6)
    pose_bone.rotation_euler = (0.2, 0.0, 0.0)  # about the bone's X = world X: the nose goes down
    bpy.context.view_layer.update()
    assert payload_now(source)[index("headPitch")] == pytest.approx(-0.2, abs=1e-6)
    pose_bone.rotation_euler = (0.0, 0.0, 0.1)  # about the bone's Z = world -Y (forward): +roll
    bpy.context.view_layer.update()
    assert payload_now(source)[index("headRoll")] == pytest.approx(0.1, abs=1e-6)
    assert all(payload_now(source)[index(name)] == 0.0 for name in shape_keys.CURVES[55:])  # eyes

    settings.head_bone = ""  # the armature object's own rotation
    face.rig.rotation_euler = (-0.15, 0.0, 0.0)
    assert payload_now(source)[index("headPitch")] == pytest.approx(0.15, abs=1e-6)

    # The docstring's claim: D = Euler((-pitch, -roll, yaw), 'XZY').
    from mathutils import Euler

    matrix = np.array(Euler((-0.25, -0.15, 0.4), "XZY").to_matrix())
    assert shape_keys.head_angles(matrix) == pytest.approx((0.4, 0.25, 0.15), abs=1e-6)

    settings.head_bone = "neck"
    with pytest.raises(addon.sources.shared_live.DriverError, match="no bone 'neck'"):  # the zip's copy of the class
        addon.sources.make_driver_source(face.scene)


class RecordingLayout:
    """Stands in for a panel's UILayout (headless Blender draws no panels): records labels and props."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.props: list[str] = []

    def row(self, **_kwargs) -> RecordingLayout:
        return self

    box = grid_flow = row

    def label(self, *, text: str, **_kwargs) -> None:
        self.labels.append(text)

    def prop(self, data, name: str, **_kwargs) -> None:
        assert hasattr(data, name), name
        self.props.append(name)

    def prop_search(self, data, name: str, search_data, search_name: str, **_kwargs) -> None:
        assert hasattr(data, name) and hasattr(search_data, search_name)
        self.props.append(name)

    def operator(self, *_args, **_kwargs) -> SimpleNamespace:
        return SimpleNamespace()


def test_the_panel_shows_the_mesh_head_bone_and_stabilise_pickers(addon: ModuleType, face: SimpleNamespace) -> None:
    layout = RecordingLayout()
    addon.panel.MEGALIVE_PT_panel.draw(SimpleNamespace(layout=layout), bpy.context)
    assert {"shape_key_object", "shape_key_prefix", "head_object", "stabilise"} <= set(layout.props)
    assert "head_bone" not in layout.props  # an empty head: no bone to pick
    assert "5 of 52 ARKit shapes matched" in layout.labels  # jawOpen, mouthSmileLeft, eyeBlinkLeft, ARKit_browInnerUp, cheekPuff
    face.scene.megalive.head_object = face.rig
    layout = RecordingLayout()
    addon.panel.MEGALIVE_PT_panel.draw(SimpleNamespace(layout=layout), bpy.context)
    assert "head_bone" in layout.props
    poll = addon.properties.MEGALIVE_SceneSettings.bl_rna.properties["shape_key_object"]
    assert poll.fixed_type.identifier == "Object"
    assert addon.properties._is_shape_key_mesh(None, face.mesh) and not addon.properties._is_shape_key_mesh(None, face.head)


def test_a_mesh_without_arkit_keys_is_refused_with_a_message(addon: ModuleType, face: SimpleNamespace) -> None:
    settings = face.scene.megalive
    settings.shape_key_object = None
    with pytest.raises(addon.sources.shared_live.DriverError, match="choose a mesh"):
        addon.sources.make_driver_source(face.scene)
    plain = bpy.data.objects.new("Plain Keys", bpy.data.meshes.new("Plain Keys"))
    face.scene.collection.objects.link(plain)
    try:
        plain.shape_key_add(name="Basis")
        plain.shape_key_add(name="Smile")
        settings.shape_key_object = plain
        with pytest.raises(addon.sources.shared_live.DriverError, match="ARKit name"):
            addon.sources.make_driver_source(face.scene)
        with pytest.raises(RuntimeError, match="ARKit name"):
            bpy.ops.megalive.bake()
    finally:
        settings.shape_key_object = None
        bpy.data.objects.remove(plain)


# ------------------------------------------------------------------------------------------------
# Live and bake against a real server


@pytest.fixture(scope="module")
def expected_engine(multi_driver_model_path: Path) -> Engine:
    return Engine(model_path=multi_driver_model_path, max_batch=1)


@pytest.fixture
def server(addon: ModuleType, multi_driver_model_path: Path) -> Iterator[str]:
    service = AvatarService(engine=Engine(model_path=multi_driver_model_path, max_batch=2), config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    address = service.start()
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.server_address, prefs.timeout_s, prefs.max_in_flight = address, 5.0, 2
    yield address
    addon.timer.shutdown()
    service.stop()


def engine_texture(engine: Engine, curves: np.ndarray) -> np.ndarray:
    """What the server's engine renders for these curves (no filter): H×W×4 uint8."""
    out = engine.run(np.asarray(curves, np.float32)[None], np.array([AVATAR], np.int64), kind="arkit")
    return imaging.to_texture_pixels(out.rgb, out.alpha)[0]


def test_live_texture_equals_the_engines_for_the_curves(
    addon: ModuleType, face: SimpleNamespace, server: str, expected_engine: Engine
) -> None:
    face.scene.frame_set(5)
    assert bpy.ops.megalive.connect() == {"FINISHED"}
    assert bpy.ops.megalive.live() == {"FINISHED"}
    controller = addon.state.runtime.controller
    tick_until(addon, lambda: controller.figures.textures >= 1)
    image = bpy.data.images["MegaLive ARKit"]
    assert tuple(image.size) == (64, 64)
    expected = engine_texture(expected_engine, expected_curves(face, 5))
    assert np.abs(image_as_texture(image) - expected / 255.0).max() <= 1.0 / 255.0 + 1e-6

    # An edit at the same frame is sent and shown.
    face.keys["eyeBlinkLeft"].value = 0.0
    face.keys["mouthSmileLeft"].value = 1.0
    edited = engine_texture(expected_engine, expected_curves(face, 5))
    assert np.abs(edited.astype(int) - expected.astype(int)).max() > 1  # the edit shows on this (untrained) model
    tick_until(addon, lambda: np.abs(image_as_texture(image) - edited / 255.0).max() <= 1.0 / 255.0 + 1e-6)
    assert controller.figures.frame_errors == 0 and addon.state.status_line().startswith("Live")


def test_bake_renders_the_shape_key_animation(
    addon: ModuleType, face: SimpleNamespace, server: str, expected_engine: Engine, tmp_path: Path
) -> None:
    scene = face.scene
    scene.frame_start, scene.frame_end = 1, 3
    scene.frame_set(5)
    settings = scene.megalive
    settings.bake_dir = str(tmp_path / "bake")
    assert bpy.ops.megalive.connect() == {"FINISHED"}
    assert bpy.ops.megalive.bake() == {"FINISHED"}
    written = sorted((tmp_path / "bake").iterdir())
    assert [p.name for p in written] == [f"MegaLive_ARKit_{f:06d}.png" for f in (1, 2, 3)]
    assert scene.frame_current == 5  # the bake moved through the range and back
    for frame, path in zip((1, 2, 3), written):
        with Image.open(path) as baked:
            assert baked.mode == "RGBA"
            expected = engine_texture(expected_engine, expected_curves(face, frame))
            assert np.abs(np.asarray(baked).astype(int) - expected.astype(int)).max() <= 1

    # Stabilised (the server's filter on): the frames carry their scene time, so a bake is reproducible.
    settings.stabilise = True
    runs = []
    for run in range(2):
        settings.bake_dir = str(tmp_path / f"bake-stabilised-{run}")
        assert bpy.ops.megalive.bake() == {"FINISHED"}
        runs.append([np.asarray(Image.open(p)) for p in sorted((tmp_path / f"bake-stabilised-{run}").iterdir())])
    assert len(runs[0]) == 3 and all(np.array_equal(a, b) for a, b in zip(*runs))
