"""The bake: render every frame of the scene range through the server (its own session) into a PNG
sequence next to the .blend and wire it into the material; its operators (Bake, Cancel Bake).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
import zmq

from . import pixels
from .material import ensure_material
from .properties import live_config
from .sources import close_source, make_driver_source
from .state import runtime
from .vocabulary import BakeError, bake_frame_name, is_no_face_error, session_stabilise, wire_driver_kind
from .wire import client as client_module
from .wire import live as shared_live  # the controller both hosts ship (client/live.py)


@dataclass
class BakeJob:
    """Renders scene frames through the server one at a time and writes PNGs (atomically).

    Under crop "auto" a frame with no face found (a take that starts before the performer is in view) is written
    as a transparent frame of the textures' size, so the sequence has no holes; the bake goes on. Before the first
    texture that size is unknown: such frames wait and are written when it comes."""

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
    signed: int = 0  # frames that came with a C2PA manifest (png sessions on a server with a signing key)
    position: int = 0  # frames done (written, or waiting for their transparent stand-in)
    no_face: list[int] = field(default_factory=list)  # scene frames where the server found no face
    _texture_size: tuple[int, int] | None = field(default=None, init=False)  # (width, height) of the textures, once one came
    _waiting: list[int] = field(default_factory=list, init=False)  # no-face frames before the first texture

    def step(self) -> None:
        frame = self.frames[self.position]
        render = self.scene.render
        timestamp = frame * render.fps_base / render.fps if self.scene_time else None
        try:
            texture = shared_live.render_one_frame(
                self.client, self.session, self.source.payload(frame), timeout_s=self.timeout_s, timestamp=timestamp
            )
        except shared_live.RenderError as error:
            if not is_no_face_error(str(error)):
                raise
            self.no_face.append(frame)
            if self._texture_size is None:
                self._waiting.append(frame)
            else:
                self._write_blank(frame)
            self.position += 1
            return
        if isinstance(texture.buffer, client_module.EncodedBuffer):
            size = pixels.png_size(texture.buffer.data) if texture.buffer.codec == "png" else None
        else:
            height, width = texture.buffer.shape[:2]
            size = (width, height)
        if self._texture_size is None and size is not None:
            self._texture_size = size
            for waiting in self._waiting:
                self._write_blank(waiting)
            self._waiting.clear()
        path = self.folder / bake_frame_name(self.prefix, frame)
        if isinstance(texture.buffer, client_module.EncodedBuffer):  # png: written as the server made (and signed) it
            self.written.append(pixels.write_file_atomically(path, bytes(texture.buffer.data)))
            self.signed += bool(texture.c2pa)
        else:
            self.written.append(pixels.write_png_atomically(path, texture.buffer.array()))
        self.position += 1

    def _write_blank(self, frame: int) -> None:
        assert self._texture_size is not None
        width, height = self._texture_size
        blank = np.zeros((height, width, 4), dtype=np.uint8)  # transparent: nothing to show where no face was found
        self.written.append(pixels.write_png_atomically(self.folder / bake_frame_name(self.prefix, frame), blank))

    @property
    def done(self) -> bool:
        return self.position == len(self.frames)


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
        info = client.hello()
        # A server that makes PNG textures signs them with a C2PA manifest when it has a signing key: the frames go to
        # disk as it sent them. An older server: rgba8, encoded here (unsigned).
        output_format = "png" if "png" in info.capabilities.get("formats", ()) else "rgba8"
        session = client.open(
            avatar=settings.avatar_id,
            driver=driver,
            size=settings.output_size(),
            output_format=output_format,
            crop=settings.crop(),
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
    no_face = f"; no face found in {len(job.no_face)} of them (written transparent)" if job.no_face and job.written else ""
    if not job.written:
        return f"no frames written: no face found in any of the {len(job.no_face)} frame(s)" if job.no_face else "no frames written"
    first_frame = job.frames[0]
    sequence = bpy.data.images.load(str(job.written[0]), check_existing=False)
    sequence.name = f"{job.prefix} (baked)"
    sequence.source = "SEQUENCE"
    target = context.scene.megalive.target_object
    if target is not None and target.type == "MESH":
        node = ensure_material(target, sequence)
        # file number = scene frame - frame_start + 1 + offset; files are numbered by scene frame
        node.image_user.frame_start = first_frame
        node.image_user.frame_offset = first_frame - 1
        node.image_user.frame_duration = len(job.written)
        node.image_user.use_auto_refresh = True
    signed = (
        "each with a C2PA manifest"
        if job.signed == len(job.written)
        else "without C2PA manifests (the server has no signing key: megalive keys signing)"
        if not job.signed
        else f"{job.signed} with a C2PA manifest"
    )
    return f"{len(job.written)} frame(s) in {job.folder}, {signed}{no_face}"


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
        if error is None and job.done and not job.written and job.no_face:
            error = BakeError("Auto Crop found no face")
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
        context.window_manager.progress_update(job.position)
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
        context.workspace.status_text_set(f"MegaLive bake: {job.position}/{len(job.frames)} (Esc cancels)")
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
