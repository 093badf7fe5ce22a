"""The operators of the live workflow: connect, disconnect, pick an avatar, go live / stop, create the textured
plane, and enroll portraits as a new avatar. The bake's operators are in bake.py.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from .material import ensure_material, output_image
from .properties import consent_statement, live_config
from .sources import close_source, make_driver_source
from .state import load_thumbnails, runtime
from .timer import ensure_timer, shutdown
from .vocabulary import session_stabilise, wire_driver_kind
from .vocabulary import status_line as controller_status_line
from .wire import enrollment as shared_enrollment  # the background enrollment both hosts ship (client/enrollment.py)
from .wire import live as shared_live  # the controller both hosts ship (client/live.py)


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
        load_thumbnails(controller.avatars)
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
        crop = settings.crop()
        if not controller.start_live(
            avatar=settings.avatar_id,
            size=settings.output_size(),
            driver=driver,
            stabilise=session_stabilise(driver, settings.stabilise),
            crop=crop,
        ):
            close_source(source)
            message = controller_status_line(controller)
            if crop == "auto" and "crop 'auto'" in message:  # e.g. a server without mediapipe
                message += " (or untick Auto Crop: the frames must then be face crops)"
            runtime.message = message
            self.report({"ERROR"}, message)
            return {"CANCELLED"}
        runtime.message = ""
        runtime.source = source
        runtime.image_name = settings.image_name
        ensure_timer()
        return {"FINISHED"}


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
        ensure_material(obj, image)
        settings.target_object = obj
        return {"FINISHED"}


ENROLL_POLL_S = 0.25  # how often the timer looks at a running enrollment


class MEGALIVE_OT_enroll(bpy.types.Operator):
    """Turn portraits (PNG or JPEG) of one person into a new avatar on the server, with their consent"""

    bl_idname = "megalive.enroll"
    bl_label = "Enroll…"

    filter_glob: bpy.props.StringProperty(default="*.png;*.jpg;*.jpeg", options={"HIDDEN"})
    files: bpy.props.CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: bpy.props.StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    filepath: bpy.props.StringProperty(subtype="FILE_PATH", options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.megalive
        name = settings.enroll_name.strip()
        paths = [str(Path(bpy.path.abspath(self.directory)) / entry.name) for entry in self.files if entry.name]
        if not paths and self.filepath:
            paths = [bpy.path.abspath(self.filepath)]
        problem = (
            "type the avatar's name first"
            if not name
            else "tick the consent box: its statement must be true"
            if not settings.enroll_consent
            else "choose one or more PNG or JPEG portraits"
            if not paths
            else "an enrollment is still sending its portraits"
            if runtime.enrolling is not None and runtime.enrolling.state in ("waiting", "sending")
            else ""
        )
        if problem:
            runtime.message = f"Enroll: {problem}"
            self.report({"ERROR"}, runtime.message)
            return {"CANCELLED"}
        config = live_config(context)
        request = shared_enrollment.EnrollRequest(
            name=name,
            consent=consent_statement(name),
            paths=tuple(paths),
            timeout_s=max(config.timeout_s, 30.0),  # the face search and the embedder take a second or two on a CPU server
            connection=config,
        )
        job = shared_enrollment.EnrollmentJob(request=request)
        job.start()
        runtime.enrolling = job
        runtime.message = job.describe()
        if not bpy.app.timers.is_registered(enroll_tick):
            bpy.app.timers.register(enroll_tick, first_interval=ENROLL_POLL_S)
        return {"FINISHED"}


def enroll_tick() -> float | None:
    """Timer: say how the enrollment goes; once its avatar exists (one-shot, before any refinement), show it (thumbnails
    refreshed) when connected; keep reporting the refinement's progress until the job ends."""
    job = runtime.enrolling
    if job is None:
        return None
    runtime.message = job.describe()
    if job.result is not None and runtime.enroll_listed is not job:
        runtime.enroll_listed = job
        controller = runtime.controller
        if controller is not None and controller.connect():  # hello + avatars again
            load_thumbnails(controller.avatars)
    return None if job.done else ENROLL_POLL_S


class MEGALIVE_OT_enroll_cancel(bpy.types.Operator):
    """Stop refining the new avatar: it stays as the one-shot enrollment made it"""

    bl_idname = "megalive.enroll_cancel"
    bl_label = "Stop refining"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return runtime.enrolling is not None and runtime.enrolling.state == "refining"

    def execute(self, context: bpy.types.Context) -> set[str]:
        runtime.enrolling.cancel()
        return {"FINISHED"}
