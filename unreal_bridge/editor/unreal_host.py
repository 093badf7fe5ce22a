"""The thin Unreal-facing layer: the only module that imports ``unreal``.

Console use (Output Log, Python mode), after copying the package into <Project>/Content/Python/:

    from megalive_bridge.editor import unreal_host as megalive
    megalive.start(server="tcp://127.0.0.1:5555", avatar=0, driver="video", video_path="D:/take.mp4")  # crop "auto"
    megalive.start(avatar=0, video_path="D:/face_crops", crop="none")  # frames that are face crops already
    megalive.status()
    megalive.stop()
    # your own face as an avatar (PNG or JPEG files; the consent statement of the person shown):
    megalive.enroll("D:/me.jpg", "Ada Lee", "I, Ada Lee, agree to this avatar of my face")
    megalive.status()  # ... says when it is enrolled, and its avatar id; then its refinement's progress
    megalive.stop_refining()  # keep the one-shot avatar as it is
    # a server on another machine, over CURVE (key files from `megalive keys`):
    megalive.start(server="tcp://stage-gpu:5555", video_path="D:/frames",
                   server_public_key="D:/keys/server.key", client_secret_key="D:/keys/editor.key_secret")

Select an actor whose mesh uses a Material Instance (Constant) with a texture parameter named
``material_parameter`` before ``start``; the live texture is bound to it.

Two pixel paths (``status()`` says which is active):
- "native": the MegaLiveTexture C++ plugin is loaded; one transient texture is created once and
  updated in place with every new frame (``UpdateTextureRegions``).
- "fallback": no plugin; each frame shown is encoded as PNG (pure Python, zlib) and turned into a
  NEW texture by ``RenderingLibrary.import_buffer_as_texture2d``; rate-limited (default 5 fps)
  because every call allocates a texture. Good for stills and checks, not for live use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import unreal

from ..client_shim import enrollment, live
from .live_texture import VIDEO_SUFFIXES, EditorDriverSource, ImageSequenceSource, LiveLinkFaceSource, VideoFileSource
from .png import encode_png

NATIVE_LIBRARY = "MegaLiveTextureLibrary"  # UMegaLiveTextureLibrary in MegaLiveTexture/Source
CLIENT_NAME = "megalive-unreal"

# The controller's phases as status() has always shown them ("connected" = a live session).
PHASE_LABELS = {
    "disconnected": "idle",
    "connected": "connected (no session)",
    "live": "connected",
    "gone": "server gone",
    "reconnecting": "reconnecting",
    "refused": "refused",
}


@dataclass(frozen=True)
class HostConfig:
    material_parameter: str = "AvatarTexture"
    fallback_max_fps: float = 5.0


class _NativePixels:
    """The C++ helper: one persistent texture updated in place."""

    name = "native (MegaLiveTexture C++ helper, every frame)"

    def __init__(self) -> None:
        self.library = getattr(unreal, NATIVE_LIBRARY)
        self.texture: object | None = None  # held here and by the material: see the plugin's lifetime notes
        self.size: tuple[int, int] | None = None

    def write(self, pixels: bytes, width: int, height: int) -> object | None:
        """Returns the texture when it is new (it must then be bound), else None."""
        created = None
        if self.texture is None or self.size != (width, height):
            self.texture = created = self.library.create_live_texture(width, height)
            self.size = (width, height)
        self.library.update_live_texture(self.texture, pixels)  # RGBA8 rows, pitch = width * 4
        return created


class _ImportedPixels:
    """No C++ helper: PNG-encode and import a new texture, at most ``max_fps`` times a second."""

    def __init__(self, *, max_fps: float) -> None:
        self.min_interval_s = 1.0 / max_fps
        self.name = f"fallback (PNG + RenderingLibrary.import_buffer_as_texture2d, at most {max_fps:g} fps)"
        self._last = float("-inf")
        self.texture: object | None = None

    def write(self, pixels: bytes, width: int, height: int) -> object | None:
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return None
        self._last = now
        png = encode_png(pixels, width=width, height=height, channels=4)
        self.texture = unreal.RenderingLibrary.import_buffer_as_texture2d(None, png)
        return self.texture


def _selected_material_instance() -> object | None:
    """The first Material Instance Constant on a mesh of the first selected actor that has one."""
    actors = unreal.get_editor_subsystem(unreal.EditorActorSubsystem).get_selected_level_actors()
    for actor in actors:
        for component in actor.get_components_by_class(unreal.MeshComponent):
            material = component.get_material(0)
            if isinstance(material, unreal.MaterialInstanceConstant):
                return material
    return None


class UnrealLiveTexture:
    """Wires the shared LiveController and a driver source to Slate's post-tick and to a texture on the
    selected actor."""

    def __init__(
        self, *, controller: live.LiveController, source: EditorDriverSource, avatar: int, host_config: HostConfig, crop: str = "none"
    ) -> None:
        self.controller = controller
        self.source = source
        self.avatar = avatar
        self.crop = crop  # the session's crop: "auto" (the server finds the face in whole frames) or "none"
        self.host_config = host_config
        self.pixels = _NativePixels() if hasattr(unreal, NATIVE_LIBRARY) else _ImportedPixels(max_fps=host_config.fallback_max_fps)
        self.material = _selected_material_instance()
        self.frames_shown = 0
        self.last_error = ""
        self._tick_handle: object | None = None

    @property
    def state(self) -> str:
        """The controller's phase in this host's words: "connected", "server gone: <why>", "stopped", ..."""
        controller = self.controller
        if controller.closed:
            return "stopped"
        label = PHASE_LABELS[controller.phase]
        return f"{label}: {controller.detail}" if controller.phase in ("gone", "refused") else label

    def start(self) -> str:
        # hello + open may block up to the timeout (this is a user command); an absent server is retried
        # in the background from the tick.
        self.controller.connect_and_start_live(avatar=self.avatar, driver=self.source.driver_kind, crop=self.crop)
        self._tick_handle = unreal.register_slate_post_tick_callback(self._on_tick)
        return self.state

    def stop(self) -> None:
        if self._tick_handle is not None:
            unreal.unregister_slate_post_tick_callback(self._tick_handle)
            self._tick_handle = None
        # Wait long enough for a running reconnect attempt (hello + reopen) to end, as before.
        self.controller.close(wait_s=2 * self.controller.config.timeout_s + 1.0)
        self.source.close()

    def _on_tick(self, delta_seconds: float) -> None:
        try:
            texture = self.controller.tick(self.source)
            if texture is None:
                return
            height, width = texture.buffer.shape[:2]
            created = self.pixels.write(bytes(texture.buffer.data), width, height)
            self.frames_shown += 1
            if created is not None and self.material is not None:
                unreal.MaterialEditingLibrary.set_material_instance_texture_parameter_value(
                    self.material, self.host_config.material_parameter, created
                )
        except Exception as error:  # an exception escaping a Slate callback repeats every frame: log it once
            message = f"{type(error).__name__}: {error}"
            if message != self.last_error:
                self.last_error = message
                unreal.log_error(f"MegaLive: {message}")

    def status(self) -> str:
        counters = self.controller.figures
        material = (
            "no material instance on the selection"
            if self.material is None
            else f"bound to parameter '{self.host_config.material_parameter}'"
        )
        lines = [
            f"MegaLive: {self.state}",
            f"  server {self.controller.config.server}{' (CURVE)' if self.controller.client.curve else ''}, "
            f"avatar {self.avatar}, driver {self.source.describe()}" + (", crop auto" if self.crop == "auto" else ""),
            f"  pixel path: {self.pixels.name}",
            f"  material: {material}",
            f"  sent {counters.sent}, textures {counters.textures}, shown {self.frames_shown}, dropped {counters.dropped}, "
            f"frame errors {counters.frame_errors}, reconnects {counters.reconnects}",
        ]
        if self.controller.frame_error:  # e.g. no face in the take yet: the texture waits, the loop goes on
            lines.append(f"  frame error: {self.controller.frame_error}")
        if self.last_error:
            lines.append(f"  last error: {self.last_error}")
        return "\n".join(lines)


_active: UnrealLiveTexture | None = None
_enrolling: enrollment.EnrollmentJob | None = None  # the last enroll(): running on its own thread, or its outcome


def start(
    server: str = "tcp://127.0.0.1:5555",
    avatar: int = 0,
    driver: str = "video",
    video_path: str | None = None,
    material_parameter: str = "AvatarTexture",
    subject: str | None = None,
    fps: float = 30.0,
    timeout_s: float = 1.0,
    server_public_key: str = "",
    client_secret_key: str = "",
    listen: str = "127.0.0.1",
    crop: str | None = None,
) -> str:
    """Connect and start updating the live texture. ``driver``: "video" (a video file — needs
    imageio-ffmpeg in Unreal's Python — or an image-sequence folder, or one image at ``video_path``)
    or "arkit" (Live Link Face received in the editor on UDP 11111, on ``listen``: this machine only
    by default; "0.0.0.0" for a phone on the LAN).

    A server on another machine is reached over CURVE: ``server_public_key`` is its NAME.key file,
    ``client_secret_key`` this machine's NAME.key_secret (``megalive keys``); both empty: plain TCP.
    A key file that cannot be used is said in the report (state "refused"), nothing is connected.

    ``crop``: "auto" (the default for video files) sends every frame whole, at its own aspect, and the server finds
    and cuts the square face crop (a phone video, a wide shot; frames with no face are said in ``status()`` and
    skipped); "none" (the default for image folders and stills) means the frames are face crops already (another
    aspect is centre-cut to square, never stretched). Auto needs mediapipe on the server."""
    global _active
    if crop not in (None, "auto", "none"):
        raise ValueError(f"crop must be 'auto' or 'none', got {crop!r}")
    if driver == "arkit" and crop == "auto":
        raise ValueError("crop 'auto' is for video and image drivers; arkit curves are not pictures")
    if _active is not None:
        stop()
    source: EditorDriverSource
    if driver in ("video", "image"):
        if video_path is None:
            raise ValueError("driver 'video' needs video_path: a video file, a folder of PNG/JPEG frames or one image")
        is_video_file = Path(video_path).suffix.lower() in VIDEO_SUFFIXES
        if is_video_file:
            source = VideoFileSource(path=video_path)
        else:
            source = ImageSequenceSource(path=video_path, fps=fps)
        crop = crop or ("auto" if is_video_file else "none")
    elif driver == "arkit":
        source = LiveLinkFaceSource(subject=subject, bind_address=listen)
        crop = "none"
    else:
        raise ValueError(f"driver must be 'video' or 'arkit', got {driver!r}")
    config = live.LiveConfig(
        server=server,
        client_name=CLIENT_NAME,
        timeout_s=timeout_s,
        server_public_key=server_public_key,
        client_secret_key=client_secret_key,
    )
    controller = live.LiveController(config=config)
    _active = UnrealLiveTexture(
        controller=controller, source=source, avatar=avatar, host_config=HostConfig(material_parameter=material_parameter), crop=crop
    )
    _active.start()
    report = _active.status()
    unreal.log(report)
    return report


def stop() -> str:
    """Unregister the tick callback and close the session and socket."""
    global _active
    if _active is None:
        return "MegaLive: not running"
    active, _active = _active, None
    active.stop()
    unreal.log("MegaLive: stopped")
    return "MegaLive: stopped"


def status() -> str:
    report = "MegaLive: not running" if _active is None else _active.status()
    if _enrolling is not None:
        report += f"\n  {_enrolling.describe()}"
    unreal.log(report)
    return report


def enroll(
    path: str,
    name: str,
    consent: str,
    server: str = "tcp://127.0.0.1:5555",
    timeout_s: float = 30.0,
    server_public_key: str = "",
    client_secret_key: str = "",
    refine_steps: int = -1,
) -> str:
    """Turn a portrait into an avatar on the server: ``path`` a PNG or JPEG file (or several, separated by ";"),
    ``consent`` the statement of the person shown (required). It runs on a thread of its own, so the editor does not
    wait; ``status()`` says when the avatar is enrolled and its id (then ``start(avatar=ID, ...)``), and how its
    refinement goes (the server refines it in the background: ``refine_steps`` -1 the server's default, 0 none)."""
    global _enrolling
    request = enrollment.EnrollRequest(
        name=name,
        consent=consent,
        paths=tuple(part.strip() for part in path.split(";") if part.strip()),
        timeout_s=timeout_s,
        connection=live.LiveConfig(server=server, server_public_key=server_public_key, client_secret_key=client_secret_key),
        refine_steps=None if refine_steps < 0 else refine_steps,
    )
    _enrolling = enrollment.EnrollmentJob(request=request)
    _enrolling.start()
    report = f"MegaLive: {_enrolling.describe()}"
    unreal.log(report)
    return report


def stop_refining() -> str:
    """Cancel the refinement of the last enrolled avatar (it stays as the one-shot enrollment made it)."""
    if _enrolling is None or _enrolling.state != "refining":
        report = "MegaLive: no refinement is running"
    else:
        _enrolling.cancel()
        report = "MegaLive: stopping the refinement; status() says when it has stopped"
    unreal.log(report)
    return report
