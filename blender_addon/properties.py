"""The extension's settings: the add-on preferences (server address, timeout, in-flight frames, CURVE
key files) and the per-scene PropertyGroup (avatar, driver source, output image, bake folder), and
the controller configuration read from the preferences.
"""

from __future__ import annotations

import bpy

from .vocabulary import CLIENT_NAME, session_crop
from .wire import client as client_module
from .wire import live as shared_live  # the controller both hosts ship (client/live.py)

ADDON_ID = __package__  # "bl_ext.<repository>.megalive" when installed as an extension


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


AUTO_CROP_HELP = (
    "The server finds the face in every whole frame (any aspect: a phone video, a wide shot) and cuts the square crop "
    "the avatar needs; frames with no face are said in the panel and skipped. Off: the frames are face crops already "
    "(one of another aspect is centre-cut to square, never stretched). Needs mediapipe on the server"
)


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
        name="Render Size",
        default=512,
        min=16,
        max=4096,
        description="Long side of the camera render sent as driver, in pixels: at the scene's aspect with Auto Crop "
        "(a face under about 40 px wide in it is not found), a square render without",
    )
    # crop "auto" per driver source: footage (movie clips, camera renders) is whole frames by nature, an image
    # sequence is often face crops already. The server then finds the face in each frame, sent at its own aspect.
    auto_crop_movie: bpy.props.BoolProperty(
        name="Auto Crop",
        default=True,
        description=AUTO_CROP_HELP,
    )
    auto_crop_camera: bpy.props.BoolProperty(
        name="Auto Crop",
        default=True,
        description=AUTO_CROP_HELP,
    )
    auto_crop_sequence: bpy.props.BoolProperty(
        name="Auto Crop",
        default=False,
        description=AUTO_CROP_HELP,
    )
    image_name: bpy.props.StringProperty(name="Image", default="MegaLive", description="Output image (reused, float RGBA)")
    output_width: bpy.props.IntProperty(name="Width", default=0, min=0, max=4096, description="0: the model's resolution")
    output_height: bpy.props.IntProperty(name="Height", default=0, min=0, max=4096, description="0: the model's resolution")
    target_object: bpy.props.PointerProperty(name="Target", type=bpy.types.Object, description="Object showing the texture")
    bake_dir: bpy.props.StringProperty(
        name="Bake Folder", subtype="DIR_PATH", description="Where baked frames go; empty: //megalive_bake/<image> next to the .blend"
    )
    enroll_name: bpy.props.StringProperty(name="Name", default="", description="The new avatar's name (unique on the server)")
    enroll_consent: bpy.props.BoolProperty(
        name="Consent",
        default=False,
        description="Tick only when the statement below is true; it is stored with the avatar, word for word",
    )

    def crop(self) -> str:
        """The session's crop for the chosen driver source: "auto" or "none" (shape keys: curves, never cropped)."""
        return session_crop(
            self.driver_kind,
            {"MOVIE_CLIP": self.auto_crop_movie, "CAMERA": self.auto_crop_camera, "IMAGE_SEQUENCE": self.auto_crop_sequence},
        )

    def output_size(self) -> tuple[int, int] | None:
        """(height, width) for the session, or None for the model's own resolution."""
        if self.output_width and self.output_height:
            return (self.output_height, self.output_width)
        return None


CONSENT_STATEMENT = "I am the person in these pictures, or I have their permission, and I agree to an avatar of this face named {name}."


def consent_statement(name: str) -> str:
    """What ticking the consent box confirms, for the avatar ``name``: shown beside the box and sent with it."""
    return CONSENT_STATEMENT.format(name=name.strip() or "…")


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
