"""The bpy layer: preferences, scene settings, operators, the N-panel, the live timer and the bake.

Kept thin: the connection is the shared controller (``client/live.py``, reached through ``wire.live``),
Blender's bpy-free bits are in ``live.py``, pixel conversion and PNG writing in ``pixels.py``, the
shape-key driver's name matching and head angles in ``shape_keys.py``.
Everything here runs on Blender's main thread; the only other thread (the controller's reconnect
worker) never touches bpy data.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
import zmq
from bpy.app.handlers import persistent

from . import movie, pixels, shape_keys
from .live import CLIENT_NAME, BakeError, bake_frame_name, sequence_index, session_stabilise, wire_driver_kind
from .live import status_line as controller_status_line
from .wire import client as client_module
from .wire import live as shared_live  # the controller both hosts ship (client/live.py)
from .wire import protocol

ADDON_ID = __package__  # "bl_ext.<repository>.megalive" when installed as an extension
TICK_INTERVAL_S = 1.0 / 120.0  # the timer runs this often while connected; each tick is bounded work
MATERIAL_NODE_NAME = "MegaLive Texture"


# ------------------------------------------------------------------------------------------------
# Runtime state (not saved in the .blend)


@dataclass
class Runtime:
    controller: shared_live.LiveController | None = None
    source: shared_live.DriverSource | None = None
    image_name: str = ""
    pixel_buffer: np.ndarray | None = None  # reused H*W*4 float32 for Image.pixels.foreach_set
    message: str = ""  # last message for the panel when there is no controller to ask
    previews: object | None = None  # bpy.utils.previews collection of avatar thumbnails
    thumbnail_icons: dict[int, int] = field(default_factory=dict)  # avatar id -> icon id
    write_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=240))  # tick cost when a texture was written
    bake_cancel: bool = False


runtime = Runtime()


def preferences(context: bpy.types.Context) -> MEGALIVE_AddonPreferences | None:
    addon = context.preferences.addons.get(ADDON_ID)
    return None if addon is None else addon.preferences


def live_config(context: bpy.types.Context) -> shared_live.LiveConfig:
    prefs = preferences(context)
    if prefs is None:
        return shared_live.LiveConfig(client_name=CLIENT_NAME)
    return shared_live.LiveConfig(
        server=prefs.server_address,
        client_name=CLIENT_NAME,
        timeout_s=prefs.timeout_s,
        max_in_flight=prefs.max_in_flight,
        server_public_key=_key_path(prefs.server_public_key),
        client_secret_key=_key_path(prefs.client_secret_key),
    )


def _key_path(path: str) -> str:
    """A key file preference as a file system path ("//" is the .blend's folder); empty stays empty (no CURVE)."""
    return bpy.path.abspath(path) if path.strip() else ""


def status_line() -> str:
    controller = runtime.controller
    if controller is None:
        return runtime.message or "Disconnected"
    return controller_status_line(controller)


# ------------------------------------------------------------------------------------------------
# Driver sources (main thread)


class ImageSequenceSource:
    """Scene frame f -> the (f - frame_start)-th file of a folder, looped."""

    def __init__(self, scene: bpy.types.Scene, path: str) -> None:
        self.scene = scene
        self.files = shared_live.ImageSequenceFiles(bpy.path.abspath(path))

    def frame_key(self) -> Hashable | None:
        return self.scene.frame_current

    def payload(self, key: Hashable) -> protocol.Buffer:
        assert isinstance(key, int)
        return self.files.encoded(sequence_index(key, frame_start=self.scene.frame_start))


class CameraRenderSource:
    """The scene camera's render at a small size, through a temporary PNG (Render Result pixels are
    not readable from Python). Blocks for one render per new frame: use a fast engine for live."""

    def __init__(self, scene: bpy.types.Scene, size: int) -> None:
        if scene.camera is None:
            raise shared_live.DriverError(f"scene {scene.name!r} has no camera")
        self.scene = scene
        self.size = size

    def frame_key(self) -> Hashable | None:
        return self.scene.frame_current

    def payload(self, key: Hashable) -> protocol.Buffer:
        assert isinstance(key, int)
        scene, render = self.scene, self.scene.render
        saved = (
            render.filepath,
            render.resolution_x,
            render.resolution_y,
            render.resolution_percentage,
            render.image_settings.file_format,
            render.image_settings.color_mode,
            scene.frame_current,
        )
        with tempfile.TemporaryDirectory(prefix="megalive-camera-") as folder:
            path = Path(folder) / "driver.png"
            try:
                if scene.frame_current != key:
                    scene.frame_set(key)
                render.filepath = str(path)
                render.resolution_x = render.resolution_y = self.size
                render.resolution_percentage = 100
                render.image_settings.file_format = "PNG"
                render.image_settings.color_mode = "RGB"
                bpy.ops.render.render(write_still=True, scene=scene.name)
                data = path.read_bytes()
            except (RuntimeError, OSError) as error:
                raise shared_live.DriverError(f"camera render failed: {error}") from None
            finally:
                (
                    render.filepath,
                    render.resolution_x,
                    render.resolution_y,
                    render.resolution_percentage,
                    render.image_settings.file_format,
                    render.image_settings.color_mode,
                    frame,
                ) = saved
                if scene.frame_current != frame:
                    scene.frame_set(frame)
        return protocol.EncodedBuffer(codec="png", data=memoryview(data))


class ShapeKeySource:
    """The "Shape keys (ARKit names)" driver: an `arkit` frame from the shape-key values of a mesh
    (ARKit names, see shape_keys.py) and the rotation of a head bone or object, at the current frame.

    Reads the scene's settings on every call, so a new mesh, head or prefix applies while live. Live
    keys are (scene frame, the 61 curves' bytes): scrubbing or editing a value makes a new frame, and
    ``payload`` only wraps the bytes. The bake passes plain scene frames: ``payload`` then moves the
    scene to that frame (animation, drivers and constraints evaluated by Blender) and ``close``
    moves it back."""

    def __init__(self, scene: bpy.types.Scene) -> None:
        self.scene = scene
        self._curves = np.zeros(shape_keys.NUM_CURVES, dtype=np.float32)  # reused by read()
        self._restore_frame: int | None = None
        settings = scene.megalive
        names, _ = shape_key_values(settings.shape_key_object)
        if not shape_keys.match_names(names, prefix=settings.shape_key_prefix):
            raise shared_live.DriverError(
                f"no shape key of {settings.shape_key_object.name!r} has an ARKit name (e.g. jawOpen, eyeBlinkLeft)"
            )
        self.read()  # a missing head bone is an error now, at Go Live or Bake

    def read(self) -> np.ndarray:
        """The 61 curves now (a reused array)."""
        return self._read()[1]

    def _read(self) -> tuple[int, np.ndarray]:
        try:
            scene = self.scene
            settings = scene.megalive
            names, values = shape_key_values(settings.shape_key_object)
            head = shape_keys.head_angles(head_rotation(settings.head_object, settings.head_bone))
            prefix, frame = settings.shape_key_prefix, scene.frame_current
        except ReferenceError:  # deleted (or replaced by undo) since the last call: a message, never a dead timer
            raise shared_live.DriverError("the scene, shape-key mesh or head object is gone; choose it again") from None
        return frame, shape_keys.arkit_curves(names, values, head=head, prefix=prefix, out=self._curves)

    def frame_key(self) -> Hashable | None:
        frame, curves = self._read()
        return (frame, curves.tobytes())

    def payload(self, key: Hashable) -> protocol.Buffer:
        if isinstance(key, tuple):  # live: the key holds the curves read by frame_key
            return protocol.raw_buffer_from_bytes(key[1], dtype="<f4", shape=(shape_keys.NUM_CURVES,))
        assert isinstance(key, int)  # the bake: a scene frame
        scene = self.scene
        if self._restore_frame is None:
            self._restore_frame = scene.frame_current
        if scene.frame_current != key:
            scene.frame_set(key)
        return shape_keys.curves_buffer(self.read())

    def close(self) -> None:
        frame, self._restore_frame = self._restore_frame, None
        if frame is not None and self.scene.frame_current != frame:
            self.scene.frame_set(frame)


def shape_key_values(obj: bpy.types.Object | None) -> tuple[tuple[str, ...], np.ndarray]:
    """Names and values of a mesh's shape keys (muted keys read 0, the reference key has no name)."""
    if obj is None:
        raise shared_live.DriverError("choose a mesh with shape keys named after ARKit blendshapes")
    key = obj.data.shape_keys if obj.type == "MESH" else None
    if key is None:
        raise shared_live.DriverError(f"{obj.name!r} is not a mesh with shape keys")
    if not key.use_relative:
        raise shared_live.DriverError(f"the shape keys of {obj.name!r} are absolute; the driver reads relative shape keys")
    blocks = key.key_blocks
    count = len(blocks)
    values = np.empty(count, dtype=np.float32)
    blocks.foreach_get("value", values)
    muted = np.empty(count, dtype=bool)
    blocks.foreach_get("mute", muted)
    values[muted] = 0.0
    reference = key.reference_key
    names = tuple("" if block == reference else block.name for block in blocks)  # the Basis drives nothing
    return names, values


def head_rotation(head: bpy.types.Object | None, bone: str) -> np.ndarray:
    """The head's 3×3 rotation away from its neutral pose, in Blender axes (shape_keys.head_angles).

    A bone: its pose in armature space (parents and constraints included) relative to its rest
    pose, D = pose · rest⁻¹ (the armature object's own transform is not part of it). An object (or
    an armature with no bone chosen): its own rotation (its Rotation fields); zero rotation is the
    neutral pose. No head: no rotation."""
    if head is None:
        return np.eye(3)
    if head.type == "ARMATURE" and bone:
        pose_bone = head.pose.bones.get(bone)
        if pose_bone is None:
            raise shared_live.DriverError(f"armature {head.name!r} has no bone {bone!r}")
        posed = pose_bone.matrix.to_3x3().normalized()
        rest = pose_bone.bone.matrix_local.to_3x3().normalized()
        return np.array(posed @ rest.transposed())
    return np.array(head.matrix_basis.to_3x3().normalized())


def movie_driver_source(scene: bpy.types.Scene) -> movie.MovieSource:
    """The chosen MovieClip's file (its frame_start / frame_offset), else the movie file from scene frame_start.

    Decoded by our own ffmpeg (bpy cannot give a movie's pixels per frame headless); clamped at both ends."""
    settings = scene.megalive
    clip = settings.movie_clip
    if clip is not None:
        if clip.source != "MOVIE":
            raise shared_live.DriverError(f"clip {clip.name!r} is an image sequence: use the Image Sequence driver")
        path, frame_start, offset = bpy.path.abspath(clip.filepath, library=clip.library), clip.frame_start, clip.frame_offset
    elif settings.movie_path:
        path, frame_start, offset = bpy.path.abspath(settings.movie_path), scene.frame_start, 0
    else:
        raise shared_live.DriverError("choose a movie clip or a movie file")
    if not movie.imageio_ffmpeg_available():
        raise shared_live.DriverError(movie.INSTALL_HINT)
    frames = movie.MovieFrames(path)
    return movie.MovieSource(frames, current_frame=lambda: scene.frame_current, frame_start=frame_start, offset=offset)


def close_source(source: shared_live.DriverSource | None) -> None:
    """Stop what a source runs in the background (the movie decoder); others have nothing to stop."""
    close = getattr(source, "close", None)
    if close is not None:
        close()


def make_driver_source(scene: bpy.types.Scene) -> shared_live.DriverSource:
    settings = scene.megalive
    if settings.driver_kind == "MOVIE_CLIP":
        return movie_driver_source(scene)
    if settings.driver_kind == "IMAGE_SEQUENCE":
        if not settings.sequence_path:
            raise shared_live.DriverError("choose an image sequence folder")
        return ImageSequenceSource(scene, settings.sequence_path)
    if settings.driver_kind == "CAMERA":
        return CameraRenderSource(scene, settings.camera_driver_size)
    if settings.driver_kind == "SHAPE_KEYS":
        return ShapeKeySource(scene)
    raise shared_live.DriverError(f"unknown driver source {settings.driver_kind!r}")


# ------------------------------------------------------------------------------------------------
# Output image


def output_image(name: str, width: int, height: int) -> bpy.types.Image:
    """The reused float RGBA image, created or resized to width×height (materials keep pointing at it)."""
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=True)
        # The texture's values are sRGB-encoded 8-bit; tag them so rather than as linear.
        image.colorspace_settings.name = "sRGB"
    elif tuple(image.size) != (width, height):
        image.scale(width, height)
    return image


def write_texture(texture: client_module.Texture) -> None:
    """Write the newest texture into the output image: one foreach_set + update, no allocation."""
    buffer = texture.buffer
    if not isinstance(buffer, protocol.RawBuffer):
        return  # the live session asks for rgba8; anything else is not ours to show
    rgba = buffer.array()  # H×W×4 uint8, top row first
    height, width = rgba.shape[:2]
    image = output_image(runtime.image_name, width, height)
    runtime.pixel_buffer = pixels.texture_to_blender_pixels(rgba, out=runtime.pixel_buffer)
    image.pixels.foreach_set(runtime.pixel_buffer)
    image.update()


def live_tick() -> float | None:
    """The bpy.app.timers callback: bounded, non-blocking work; None unregisters it."""
    controller = runtime.controller
    if controller is None:
        return None
    began = time.perf_counter()
    phase = controller.phase
    texture = controller.tick(runtime.source)
    if texture is not None:
        write_texture(texture)
        runtime.write_seconds.append(time.perf_counter() - began)
    if texture is not None or controller.phase != phase:
        _redraw_sidebar()
    return TICK_INTERVAL_S


def _redraw_sidebar() -> None:
    window_manager = bpy.context.window_manager
    if window_manager is None:
        return
    for window in window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(live_tick):
        bpy.app.timers.register(live_tick, first_interval=0.0)


def shutdown(message: str = "") -> None:
    """Stop the live loop: timer off, session and socket closed. Safe to call any time."""
    if bpy.app.timers.is_registered(live_tick):
        bpy.app.timers.unregister(live_tick)
    controller, runtime.controller = runtime.controller, None
    if controller is not None:
        controller.close()
    close_source(runtime.source)
    runtime.source = None
    runtime.pixel_buffer = None
    runtime.message = message


def _load_thumbnails(avatars: list[client_module.AvatarEntry]) -> None:
    import bpy.utils.previews

    if runtime.previews is not None:
        bpy.utils.previews.remove(runtime.previews)
    runtime.previews = bpy.utils.previews.new()
    runtime.thumbnail_icons.clear()
    for avatar in avatars:
        if avatar.thumbnail is None:
            continue  # no thumbnail: the panel shows the name only
        rgb = avatar.thumbnail.array()
        preview = runtime.previews.new(f"avatar-{avatar.id}")
        preview.image_size = (rgb.shape[1], rgb.shape[0])
        preview.image_pixels_float.foreach_set(pixels.texture_to_blender_pixels(np.ascontiguousarray(rgb)))
        runtime.thumbnail_icons[avatar.id] = preview.icon_id


# ------------------------------------------------------------------------------------------------
# Preferences and scene settings


class MEGALIVE_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    server_address: bpy.props.StringProperty(
        name="Server", default=client_module.DEFAULT_ADDRESS, description="ZeroMQ address of the MegaLive server (megalive serve --bind)"
    )
    timeout_s: bpy.props.FloatProperty(
        name="Timeout",
        default=2.0,
        min=0.1,
        max=30.0,
        unit="TIME_ABSOLUTE",
        description="Longest wait for the server in Connect, Live and Bake (seconds)",
    )
    max_in_flight: bpy.props.IntProperty(
        name="In-flight frames", default=2, min=1, max=8, description="Driver frames sent before their textures come back"
    )
    # CURVE, for a server on another machine (megalive keys makes the files); both empty: plain loopback TCP.
    server_public_key: bpy.props.StringProperty(
        name="Server Public Key",
        subtype="FILE_PATH",
        default="",
        description="The server's public key file (NAME.key) for an encrypted connection to a remote server. Empty: no CURVE",
    )
    client_secret_key: bpy.props.StringProperty(
        name="Client Secret Key",
        subtype="FILE_PATH",
        default="",
        description="This machine's secret key file (NAME.key_secret); its NAME.key must be in the server's allow folder. Empty: no CURVE",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "server_address")
        layout.prop(self, "server_public_key")
        layout.prop(self, "client_secret_key")
        row = layout.row()
        row.prop(self, "timeout_s")
        row.prop(self, "max_in_flight")


def _is_shape_key_mesh(_settings: bpy.types.PropertyGroup, obj: bpy.types.Object) -> bool:
    return obj.type == "MESH" and obj.data.shape_keys is not None


class MEGALIVE_SceneSettings(bpy.types.PropertyGroup):
    avatar_id: bpy.props.IntProperty(name="Avatar", default=0, min=0, description="Avatar id on the server")
    driver_kind: bpy.props.EnumProperty(
        name="Driver",
        items=[
            ("IMAGE_SEQUENCE", "Image Sequence", "A folder of PNG/JPEG frames; scene frame start = first file"),
            (
                "MOVIE_CLIP",
                "Movie Clip",
                "A movie clip (or movie file): its first frame at the clip's start frame, "
                "held before and after; decoded with imageio-ffmpeg",
            ),
            ("CAMERA", "Camera Render", "The scene camera's render (one render per frame; use Workbench/EEVEE)"),
            (
                "SHAPE_KEYS",
                "Shape Keys (ARKit names)",
                "A mesh's shape keys named after the 52 ARKit blendshapes "
                "and a head bone's or object's rotation, sent as ARKit curves (needs a model with an arkit driver)",
            ),
        ],
        default="IMAGE_SEQUENCE",
    )
    sequence_path: bpy.props.StringProperty(name="Frames", subtype="DIR_PATH", description="Folder of driver frames")
    movie_clip: bpy.props.PointerProperty(
        name="Clip", type=bpy.types.MovieClip, description="Movie clip driving the avatar (its Start Frame maps to its first frame)"
    )
    movie_path: bpy.props.StringProperty(
        name="Movie", subtype="FILE_PATH", description="Movie file used when no clip is chosen; starts at the scene start"
    )
    shape_key_object: bpy.props.PointerProperty(
        name="Shape Keys",
        type=bpy.types.Object,
        poll=_is_shape_key_mesh,
        description="Mesh whose shape keys named after ARKit blendshapes (jawOpen, eyeBlinkLeft, ...) drive the avatar",
    )
    shape_key_prefix: bpy.props.StringProperty(
        name="Key Prefix",
        default="",
        description="Optional prefix of this mesh's shape-key names (e.g. 'Head'); keys like 'ARKit_jawOpen' match without it",
    )
    head_object: bpy.props.PointerProperty(
        name="Head",
        type=bpy.types.Object,
        description="Object (or armature, with a bone) whose rotation is the head "
        "yaw/pitch/roll; the head faces -Y, +Z up. Empty: no head rotation",
    )
    head_bone: bpy.props.StringProperty(
        name="Bone",
        default="",
        description="Head bone of the armature: its pose rotation relative to its rest "
        "pose is the head rotation. Empty: the armature object's rotation",
    )
    stabilise: bpy.props.BoolProperty(
        name="Stabilise",
        default=True,
        description="The server's One-Euro smoothing of the curves (for noisy capture); off: every frame exactly as sent",
    )
    camera_driver_size: bpy.props.IntProperty(
        name="Render Size", default=256, min=16, max=2048, description="Square size of the camera render sent as driver"
    )
    image_name: bpy.props.StringProperty(name="Image", default="MegaLive", description="Output image (reused, float RGBA)")
    output_width: bpy.props.IntProperty(name="Width", default=0, min=0, max=4096, description="0: the model's resolution")
    output_height: bpy.props.IntProperty(name="Height", default=0, min=0, max=4096, description="0: the model's resolution")
    target_object: bpy.props.PointerProperty(name="Target", type=bpy.types.Object, description="Object showing the texture")
    bake_dir: bpy.props.StringProperty(
        name="Bake Folder", subtype="DIR_PATH", description="Where baked frames go; empty: //megalive_bake/<image> next to the .blend"
    )

    def output_size(self) -> tuple[int, int] | None:
        """(height, width) for the session, or None for the model's own resolution."""
        if self.output_width and self.output_height:
            return (self.output_height, self.output_width)
        return None


# ------------------------------------------------------------------------------------------------
# Operators


class MEGALIVE_OT_connect(bpy.types.Operator):
    """Connect to the MegaLive server and list its avatars"""

    bl_idname = "megalive.connect"
    bl_label = "Connect"

    def execute(self, context: bpy.types.Context) -> set[str]:
        shutdown()
        controller = shared_live.LiveController(config=live_config(context))
        if not controller.connect():
            message = controller_status_line(controller)
            controller.close()
            runtime.message = message
            self.report({"ERROR"}, message)
            return {"CANCELLED"}
        runtime.controller = controller
        _load_thumbnails(controller.avatars)
        ensure_timer()
        self.report({"INFO"}, controller_status_line(controller))
        return {"FINISHED"}


class MEGALIVE_OT_disconnect(bpy.types.Operator):
    """Stop live updates and disconnect from the server"""

    bl_idname = "megalive.disconnect"
    bl_label = "Disconnect"

    def execute(self, context: bpy.types.Context) -> set[str]:
        shutdown("Disconnected")
        return {"FINISHED"}


class MEGALIVE_OT_pick_avatar(bpy.types.Operator):
    """Drive this avatar"""

    bl_idname = "megalive.pick_avatar"
    bl_label = "Pick Avatar"
    bl_options = {"INTERNAL"}

    avatar_id: bpy.props.IntProperty(min=0)

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.scene.megalive.avatar_id = self.avatar_id
        return {"FINISHED"}


class MEGALIVE_OT_live(bpy.types.Operator):
    """Start or stop live textures from the driver source"""

    bl_idname = "megalive.live"
    bl_label = "Live"

    def execute(self, context: bpy.types.Context) -> set[str]:
        controller = runtime.controller
        if controller is None:
            self.report({"ERROR"}, "connect to a server first")
            return {"CANCELLED"}
        if controller.is_live:
            controller.stop_live()
            close_source(runtime.source)
            runtime.source = None
            return {"FINISHED"}
        settings = context.scene.megalive
        try:
            source = make_driver_source(context.scene)
        except shared_live.DriverError as error:
            runtime.message = str(error)
            self.report({"ERROR"}, f"driver: {error}")
            return {"CANCELLED"}
        driver = wire_driver_kind(settings.driver_kind)
        if not controller.start_live(
            avatar=settings.avatar_id, size=settings.output_size(), driver=driver, stabilise=session_stabilise(driver, settings.stabilise)
        ):
            close_source(source)
            self.report({"ERROR"}, controller_status_line(controller))
            return {"CANCELLED"}
        runtime.message = ""
        runtime.source = source
        runtime.image_name = settings.image_name
        ensure_timer()
        return {"FINISHED"}


def _ensure_material(obj: bpy.types.Object, image: bpy.types.Image) -> bpy.types.ShaderNodeTexImage:
    """The object's MegaLive material (emission of the image, transparent where alpha is 0)."""
    material = next(
        (
            slot.material
            for slot in obj.material_slots
            if slot.material is not None and slot.material.node_tree is not None and MATERIAL_NODE_NAME in slot.material.node_tree.nodes
        ),
        None,
    )
    if material is None:
        material = bpy.data.materials.new(f"MegaLive {image.name}")
        if material.node_tree is None:  # Blender < 5.0 creates materials without nodes
            material.use_nodes = True
        nodes, links = material.node_tree.nodes, material.node_tree.links
        nodes.clear()
        texture = nodes.new("ShaderNodeTexImage")
        texture.name = MATERIAL_NODE_NAME
        emission = nodes.new("ShaderNodeEmission")
        transparent = nodes.new("ShaderNodeBsdfTransparent")
        mix = nodes.new("ShaderNodeMixShader")
        output = nodes.new("ShaderNodeOutputMaterial")
        links.new(texture.outputs["Color"], emission.inputs["Color"])
        links.new(texture.outputs["Alpha"], mix.inputs["Fac"])
        links.new(transparent.outputs["BSDF"], mix.inputs[1])
        links.new(emission.outputs["Emission"], mix.inputs[2])
        links.new(mix.outputs["Shader"], output.inputs["Surface"])
        obj.data.materials.append(material)
    node = material.node_tree.nodes[MATERIAL_NODE_NAME]
    node.image = image
    return node


class MEGALIVE_OT_create_plane(bpy.types.Operator):
    """Add a plane showing the output image (emission material) and make it the target"""

    bl_idname = "megalive.create_plane"
    bl_label = "Create Plane"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.megalive
        size = settings.output_size() or (256, 256)
        image = output_image(settings.image_name, size[1], size[0])
        mesh = bpy.data.meshes.new("MegaLive Plane")
        aspect = size[1] / size[0]
        mesh.from_pydata([(-aspect, -1, 0), (aspect, -1, 0), (aspect, 1, 0), (-aspect, 1, 0)], [], [(0, 1, 2, 3)])
        uv = mesh.uv_layers.new(name="UVMap")
        for loop, coordinate in zip(uv.data, ((0, 0), (1, 0), (1, 1), (0, 1))):
            loop.uv = coordinate
        obj = bpy.data.objects.new("MegaLive Plane", mesh)
        obj.rotation_euler = (np.pi / 2, 0.0, 0.0)  # stand up, facing -Y like a front camera
        context.scene.collection.objects.link(obj)
        _ensure_material(obj, image)
        settings.target_object = obj
        return {"FINISHED"}


# ------------------------------------------------------------------------------------------------
# Bake


@dataclass
class BakeJob:
    """Renders scene frames through the server one at a time and writes PNGs (atomically)."""

    scene: bpy.types.Scene
    source: shared_live.DriverSource
    client: client_module.AvatarClient
    session: int
    folder: Path
    prefix: str
    frames: list[int]
    timeout_s: float
    scene_time: bool = False  # stamp frames with their scene time (capture sessions: the server's filter follows the timeline)
    written: list[Path] = field(default_factory=list)

    def step(self) -> None:
        frame = self.frames[len(self.written)]
        render = self.scene.render
        timestamp = frame * render.fps_base / render.fps if self.scene_time else None
        texture = shared_live.render_one_frame(
            self.client, self.session, self.source.payload(frame), timeout_s=self.timeout_s, timestamp=timestamp
        )
        rgba = texture.array()
        self.written.append(pixels.write_png_atomically(self.folder / bake_frame_name(self.prefix, frame), rgba))

    @property
    def done(self) -> bool:
        return len(self.written) == len(self.frames)


def bake_folder(scene: bpy.types.Scene) -> Path:
    settings = scene.megalive
    chosen = settings.bake_dir or f"//megalive_bake/{bpy.path.clean_name(settings.image_name)}"
    path = bpy.path.abspath(chosen)
    if path.startswith("//"):
        raise BakeError("save the .blend first, or choose a bake folder")
    return Path(path)


def start_bake(context: bpy.types.Context) -> BakeJob:
    """Validate everything and open the bake's own session (blocking, bounded by the timeout)."""
    source = make_driver_source(context.scene)
    try:
        return _open_bake(context, source)
    except BaseException:
        close_source(source)
        raise


def _open_bake(context: bpy.types.Context, source: shared_live.DriverSource) -> BakeJob:
    scene = context.scene
    settings = scene.megalive
    folder = bake_folder(scene)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".megalive-write-test-"):
            pass
    except OSError as error:
        raise BakeError(f"cannot write to {folder}: {error.strerror or error}") from None
    config = live_config(context)
    try:
        client = shared_live.new_client(config, name="megalive-blender-bake", max_in_flight=1)
    except client_module.CurveKeyError as error:
        raise BakeError(str(error)) from None
    driver = wire_driver_kind(settings.driver_kind)
    try:
        client.hello()
        session = client.open(
            avatar=settings.avatar_id,
            driver=driver,
            size=settings.output_size(),
            output_format="rgba8",
            crop="none",
            stabilise=session_stabilise(driver, settings.stabilise),
        )
    except client_module.ServerGoneError as error:
        client.close()
        raise BakeError(f"cannot reach {config.server}: {error}") from None
    except zmq.ZMQError as error:  # a malformed address
        client.close()
        raise BakeError(f"bad server address {config.server!r}: {error}") from None
    except client_module.ServerError as error:
        client.close()
        raise BakeError(f"the server refused the bake: {error.message}") from None
    frames = list(range(scene.frame_start, scene.frame_end + 1, max(1, scene.frame_step)))
    return BakeJob(
        scene=scene,
        source=source,
        client=client,
        session=session,
        folder=folder,
        prefix=bpy.path.clean_name(settings.image_name),
        frames=frames,
        timeout_s=config.timeout_s,
        scene_time=driver != "image",
    )


def finish_bake(context: bpy.types.Context, job: BakeJob) -> str:
    """Close the bake's session; wire the frames written (even of a cancelled bake) into the material."""
    job.client.close()
    close_source(job.source)
    if not job.written:
        return "no frames written"
    first_frame = job.frames[0]
    sequence = bpy.data.images.load(str(job.written[0]), check_existing=False)
    sequence.name = f"{job.prefix} (baked)"
    sequence.source = "SEQUENCE"
    target = context.scene.megalive.target_object
    if target is not None and target.type == "MESH":
        node = _ensure_material(target, sequence)
        # file number = scene frame - frame_start + 1 + offset; files are numbered by scene frame
        node.image_user.frame_start = first_frame
        node.image_user.frame_offset = first_frame - 1
        node.image_user.frame_duration = len(job.written)
        node.image_user.use_auto_refresh = True
    return f"{len(job.written)} frame(s) in {job.folder}"


class MEGALIVE_OT_bake(bpy.types.Operator):
    """Render every frame of the scene range through the server into a PNG sequence (Esc cancels)"""

    bl_idname = "megalive.bake"
    bl_label = "Bake"

    _job: BakeJob | None = None
    _timer: object | None = None

    def _begin(self, context: bpy.types.Context) -> bool:
        runtime.bake_cancel = False
        try:
            self._job = start_bake(context)
        except (BakeError, shared_live.RenderError, shared_live.DriverError) as error:
            runtime.message = f"Bake: {error}"
            self.report({"ERROR"}, f"Bake: {error}")
            return False
        context.window_manager.progress_begin(0, len(self._job.frames))
        return True

    def _end(self, context: bpy.types.Context, error: Exception | None) -> set[str]:
        job = self._job
        assert job is not None
        self._job = None
        context.window_manager.progress_end()
        summary = finish_bake(context, job)
        if error is not None:
            runtime.message = f"Bake stopped: {error} ({summary})"
            self.report({"ERROR"}, runtime.message)
            return {"CANCELLED"}
        if runtime.bake_cancel or not job.done:
            runtime.message = f"Bake cancelled: {summary}"
            self.report({"WARNING"}, runtime.message)
            return {"CANCELLED"}
        runtime.message = f"Baked {summary}"
        self.report({"INFO"}, runtime.message)
        return {"FINISHED"}

    def _step(self, context: bpy.types.Context) -> Exception | None:
        job = self._job
        assert job is not None
        try:
            job.step()
        except (BakeError, shared_live.RenderError, shared_live.DriverError) as error:
            return error
        except OSError as error:
            return BakeError(f"cannot write a frame: {error.strerror or error}")
        context.window_manager.progress_update(len(job.written))
        return None

    def execute(self, context: bpy.types.Context) -> set[str]:
        """Synchronous bake (scripts, headless): stops at the first error or when bake_cancel is set."""
        if not self._begin(context):
            return {"CANCELLED"}
        error = None
        while self._job is not None and not self._job.done and not runtime.bake_cancel:
            if (error := self._step(context)) is not None:
                break
        return self._end(context, error)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if context.window is None:
            return self.execute(context)
        if not self._begin(context):
            return {"CANCELLED"}
        self._timer = context.window_manager.event_timer_add(0.0, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC":
            runtime.bake_cancel = True
        if event.type != "TIMER" and not runtime.bake_cancel:
            return {"PASS_THROUGH"}
        job = self._job
        assert job is not None
        error = None if runtime.bake_cancel else self._step(context)
        context.workspace.status_text_set(f"MegaLive bake: {len(job.written)}/{len(job.frames)} (Esc cancels)")
        if error is None and not job.done and not runtime.bake_cancel:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)
        return self._end(context, error)


class MEGALIVE_OT_bake_cancel(bpy.types.Operator):
    """Cancel the running bake after the current frame (frames already written are kept)"""

    bl_idname = "megalive.bake_cancel"
    bl_label = "Cancel Bake"

    def execute(self, context: bpy.types.Context) -> set[str]:
        runtime.bake_cancel = True
        return {"FINISHED"}


# ------------------------------------------------------------------------------------------------
# Panel


class MEGALIVE_PT_panel(bpy.types.Panel):
    bl_label = "MegaLive"
    bl_idname = "MEGALIVE_PT_panel"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MegaLive"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.megalive
        controller = runtime.controller
        row = layout.row()
        if controller is None:
            row.operator(MEGALIVE_OT_connect.bl_idname, icon="LINKED")
        else:
            row.operator(MEGALIVE_OT_disconnect.bl_idname, icon="UNLINKED")
        layout.label(text=status_line())
        if controller is not None and runtime.message:  # e.g. why Live or Bake could not start
            layout.label(text=runtime.message, icon="INFO")

        if controller is not None and controller.avatars:
            box = layout.box()
            box.label(text="Avatar")
            grid = box.grid_flow(columns=3, even_columns=True)
            for avatar in controller.avatars:
                icon = runtime.thumbnail_icons.get(avatar.id, 0)
                op = grid.operator(
                    MEGALIVE_OT_pick_avatar.bl_idname, text=avatar.name, icon_value=icon, depress=avatar.id == settings.avatar_id
                )
                op.avatar_id = avatar.id

        box = layout.box()
        box.prop(settings, "driver_kind")
        if settings.driver_kind == "IMAGE_SEQUENCE":
            box.prop(settings, "sequence_path")
        elif settings.driver_kind == "MOVIE_CLIP":
            box.prop(settings, "movie_clip")
            if settings.movie_clip is None:
                box.prop(settings, "movie_path")
            if not movie.imageio_ffmpeg_available():
                box.label(text="Needs imageio-ffmpeg (ships in the extension zip; or pip install it", icon="ERROR")
                box.label(text="into Blender's Python)")
        elif settings.driver_kind == "SHAPE_KEYS":
            _draw_shape_key_settings(box, settings)
        else:
            box.prop(settings, "camera_driver_size")

        box = layout.box()
        box.prop(settings, "image_name")
        row = box.row(align=True)
        row.prop(settings, "output_width")
        row.prop(settings, "output_height")
        row = box.row(align=True)
        row.prop(settings, "target_object")
        row.operator(MEGALIVE_OT_create_plane.bl_idname, text="", icon="MESH_PLANE")

        live = controller is not None and controller.is_live
        layout.operator(MEGALIVE_OT_live.bl_idname, text="Stop Live" if live else "Go Live", icon="PLAY", depress=live)
        if controller is not None and live:
            layout.label(text=controller.figures.summary())

        box = layout.box()
        box.prop(settings, "bake_dir")
        row = box.row(align=True)
        row.operator(MEGALIVE_OT_bake.bl_idname, icon="RENDER_ANIMATION")
        row.operator(MEGALIVE_OT_bake_cancel.bl_idname, text="", icon="CANCEL")


def _draw_shape_key_settings(box: bpy.types.UILayout, settings: MEGALIVE_SceneSettings) -> None:
    box.prop(settings, "shape_key_object")
    box.prop(settings, "shape_key_prefix")
    mesh = settings.shape_key_object
    if mesh is not None and mesh.type == "MESH" and mesh.data.shape_keys is not None:
        names = tuple(block.name for block in mesh.data.shape_keys.key_blocks[1:])  # not the Basis
        matched = len(shape_keys.match_names(names, prefix=settings.shape_key_prefix))
        box.label(text=f"{matched} of {shape_keys.NUM_BLENDSHAPES} ARKit shapes matched", icon="CHECKMARK" if matched else "ERROR")
    box.prop(settings, "head_object")
    head = settings.head_object
    if head is not None and head.type == "ARMATURE":
        box.prop_search(settings, "head_bone", head.data, "bones")
    box.prop(settings, "stabilise")


# ------------------------------------------------------------------------------------------------
# Registration


@persistent
def on_load_pre(*_args: object) -> None:
    """A new .blend is about to load: the old scene's image and settings go away, so stop streaming."""
    shutdown()


CLASSES: tuple[type, ...] = (
    MEGALIVE_AddonPreferences,
    MEGALIVE_SceneSettings,
    MEGALIVE_OT_connect,
    MEGALIVE_OT_disconnect,
    MEGALIVE_OT_pick_avatar,
    MEGALIVE_OT_live,
    MEGALIVE_OT_create_plane,
    MEGALIVE_OT_bake,
    MEGALIVE_OT_bake_cancel,
    MEGALIVE_PT_panel,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.megalive = bpy.props.PointerProperty(type=MEGALIVE_SceneSettings)
    if on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(on_load_pre)


def unregister() -> None:
    import bpy.utils.previews

    shutdown()
    if on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(on_load_pre)
    if runtime.previews is not None:
        bpy.utils.previews.remove(runtime.previews)
        runtime.previews = None
        runtime.thumbnail_icons.clear()
    del bpy.types.Scene.megalive
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
