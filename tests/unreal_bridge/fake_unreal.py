"""HOST-BOUNDARY FAKE of the `unreal` module: only the calls unreal_bridge/editor/unreal_host.py makes.

Not Unreal: it records what the bridge asked the host to do (tick callbacks, textures created and
updated, material parameters set, buffers imported) so tests can check it. Install it with
``install(native=...)`` which puts a fresh module in ``sys.modules["unreal"]``. Pure stdlib, so it
also works in the packaging test's subprocess.
"""

from __future__ import annotations

import sys
import types
import zlib
from collections.abc import Callable


class Texture2D:
    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixels = b""  # RGBA8 rows, pitch = width * 4
        self.updates = 0


def decode_simple_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGBA bytes of a PNG from encode_png (filter 0, RGBA8, one IDAT)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, width, height, idat = 8, 0, 0, b""
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, height = int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:8], "big")
            assert payload[8:10] == bytes([8, 6]), "fake decodes RGBA8 only"
        elif kind == b"IDAT":
            idat += payload
        offset += 12 + length
    raw = zlib.decompress(idat)
    stride = width * 4
    rows = [raw[row * (stride + 1) : (row + 1) * (stride + 1)] for row in range(height)]
    assert all(r[0] == 0 for r in rows), "fake decodes filter 0 only"
    return width, height, b"".join(r[1:] for r in rows)


def install(*, native: bool, selected_material: bool = True) -> types.ModuleType:
    module = types.ModuleType("unreal", __doc__)
    module.tick_callbacks = {}  # handle -> callable
    module.unregistered = []
    module.logs = []
    module.created_textures = []
    module.imported_buffers = []
    module.parameter_sets = []  # (material instance, name, texture)
    next_handle = iter(range(1, 1 << 30))

    def register_slate_post_tick_callback(callback: Callable[[float], None]) -> int:
        handle = next(next_handle)
        module.tick_callbacks[handle] = callback
        return handle

    def unregister_slate_post_tick_callback(handle: int) -> None:
        module.tick_callbacks.pop(handle)
        module.unregistered.append(handle)

    def fire_tick(delta_seconds: float = 1 / 60) -> None:
        for callback in list(module.tick_callbacks.values()):
            callback(delta_seconds)

    module.register_slate_post_tick_callback = register_slate_post_tick_callback
    module.unregister_slate_post_tick_callback = unregister_slate_post_tick_callback
    module.fire_tick = fire_tick
    module.log = lambda text: module.logs.append(("info", str(text)))
    module.log_warning = lambda text: module.logs.append(("warning", str(text)))
    module.log_error = lambda text: module.logs.append(("error", str(text)))
    module.Texture2D = Texture2D

    class MaterialInstanceConstant:
        pass

    class MeshComponent:
        def __init__(self, material: object) -> None:
            self.material = material

        def get_material(self, index: int) -> object:
            return self.material

    class Actor:
        def __init__(self, components: list[MeshComponent]) -> None:
            self.components = components

        def get_components_by_class(self, cls: type) -> list[object]:
            return [c for c in self.components if isinstance(c, cls)]

    class EditorActorSubsystem:
        def get_selected_level_actors(self) -> list[Actor]:
            return module.selected_actors

    module.MaterialInstanceConstant = MaterialInstanceConstant
    module.MeshComponent = MeshComponent
    module.EditorActorSubsystem = EditorActorSubsystem
    module.material_instance = MaterialInstanceConstant()
    module.selected_actors = [Actor([MeshComponent(module.material_instance)])] if selected_material else []
    module.get_editor_subsystem = lambda cls: cls()

    class MaterialEditingLibrary:
        @staticmethod
        def set_material_instance_texture_parameter_value(instance: object, parameter_name: str, value: object) -> bool:
            module.parameter_sets.append((instance, str(parameter_name), value))
            return True

    class RenderingLibrary:
        @staticmethod
        def import_buffer_as_texture2d(world_context_object: object, buffer: bytes) -> Texture2D:
            width, height, pixels = decode_simple_png(bytes(buffer))
            texture = Texture2D(width, height)
            texture.pixels = pixels
            module.imported_buffers.append(bytes(buffer))
            module.created_textures.append(texture)
            return texture

    module.MaterialEditingLibrary = MaterialEditingLibrary
    module.RenderingLibrary = RenderingLibrary

    if native:

        class MegaLiveTextureLibrary:
            @staticmethod
            def create_live_texture(width: int, height: int) -> Texture2D:
                texture = Texture2D(width, height)
                module.created_textures.append(texture)
                return texture

            @staticmethod
            def update_live_texture(texture: Texture2D, pixels: bytes) -> bool:
                assert len(pixels) == texture.width * texture.height * 4, "row pitch must be width * 4, no padding"
                texture.pixels = bytes(pixels)
                texture.updates += 1
                return True

        module.MegaLiveTextureLibrary = MegaLiveTextureLibrary

    sys.modules["unreal"] = module
    return module
