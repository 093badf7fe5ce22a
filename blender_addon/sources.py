"""Driver sources (main thread): an image sequence folder, the scene camera's render, a movie clip
(decoded by movie.py) and a mesh's ARKit-named shape keys with the head's rotation (names and angles
in shape_keys.py); ``make_driver_source`` picks one from the scene's settings.
"""

from __future__ import annotations

import tempfile
from collections.abc import Hashable
from pathlib import Path

import bpy
import numpy as np

from . import movie, shape_keys
from .vocabulary import frame_size_at, sequence_index
from .wire import live as shared_live  # the controller both hosts ship (client/live.py)
from .wire import protocol


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
    """The scene camera's render, through a temporary PNG (Render Result pixels are not readable from
    Python). Blocks for one render per new frame: use a fast engine for live.

    ``whole_frame`` (crop "auto"): the render keeps the scene's aspect (its resolution and pixel aspect) with its
    long side ``size``, and the server finds the face in it; else a ``size``² render (the camera's view fitted to a
    square by Blender itself), the face crop as it is."""

    def __init__(self, scene: bpy.types.Scene, size: int, *, whole_frame: bool = False) -> None:
        if scene.camera is None:
            raise shared_live.DriverError(f"scene {scene.name!r} has no camera")
        self.scene = scene
        self.size = size
        self.whole_frame = whole_frame

    def render_size(self) -> tuple[int, int]:
        """(width, height) of the driver render, with square pixels."""
        if not self.whole_frame:
            return self.size, self.size
        render = self.scene.render
        return frame_size_at(render.resolution_x * render.pixel_aspect_x, render.resolution_y * render.pixel_aspect_y, long_side=self.size)

    def frame_key(self) -> Hashable | None:
        return self.scene.frame_current

    def payload(self, key: Hashable) -> protocol.Buffer:
        assert isinstance(key, int)
        scene, render = self.scene, self.scene.render
        width, height = self.render_size()
        saved = (
            render.filepath,
            render.resolution_x,
            render.resolution_y,
            render.resolution_percentage,
            render.pixel_aspect_x,
            render.pixel_aspect_y,
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
                render.resolution_x, render.resolution_y = width, height
                render.resolution_percentage = 100
                render.pixel_aspect_x = render.pixel_aspect_y = 1.0  # the aspect is in the resolution: square pixels
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
                    render.pixel_aspect_x,
                    render.pixel_aspect_y,
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
        return CameraRenderSource(scene, settings.camera_driver_size, whole_frame=settings.crop() == "auto")
    if settings.driver_kind == "SHAPE_KEYS":
        return ShapeKeySource(scene)
    raise shared_live.DriverError(f"unknown driver source {settings.driver_kind!r}")
