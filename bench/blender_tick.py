"""Blender-side cost of the live loop, measured headless with the PyPI `bpy` module.

For each model: build the extension zip offline (wheels repacked from this environment), install and
enable it, start a real server on loopback, go live on an image-sequence driver, advance the frame
every tick (as during playback) and call the timer function directly (timers do not fire headless).
Prints the time spent in ticks that wrote a texture, the conversion and `foreach_set` shares, and
the end-to-end textures per second. Figures only; nothing passes or fails.

    .venv/bin/python bench/blender_tick.py assets/default/student.onnx runs/contract-512.onnx
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="avatar models (.onnx with sidecar)")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per model (after 2 s warm-up)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    # First: HOME and Blender's user folders point at a temporary place before bpy is imported, so the
    # user's own Blender preferences and extensions stay untouched.
    from blender_addon.package import private_blender_home, repack_installed_wheel

    private_blender_home()

    import bpy
    import numpy as np
    from PIL import Image

    from blender_addon.package import build_addon
    from server.engine import Engine
    from server.service import AvatarService, ServiceConfig

    wheels = Path(tempfile.mkdtemp())
    for distribution in ("pyzmq", "msgpack"):
        repack_installed_wheel(distribution, wheels)
    archive = build_addon(out_dir=Path(tempfile.mkdtemp()), offline_wheels_dir=wheels)
    bpy.ops.extensions.package_install_files(filepath=str(archive), repo="user_default", enable_on_install=True)
    ui = sys.modules["bl_ext.user_default.megalive.timer"]
    for model in args.models:
        engine = Engine(model_path=model)
        resolution = engine.resolution[0]
        service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*"))
        service.start()
        frames = Path(tempfile.mkdtemp())
        generator = np.random.default_rng(0)
        for index in range(8):
            Image.fromarray(generator.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(frames / f"f{index:03d}.png")
        preferences = bpy.context.preferences.addons["bl_ext.user_default.megalive"].preferences
        preferences.server_address, preferences.timeout_s = service.bound_address, 5
        scene = bpy.context.scene
        scene.frame_start, scene.frame_end = 1, 100_000
        scene.frame_set(1)
        scene.megalive.sequence_path, scene.megalive.image_name = str(frames), f"bench{resolution}"
        bpy.ops.megalive.connect()
        bpy.ops.megalive.live()
        controller = ui.runtime.controller
        ui.runtime.write_seconds.clear()
        began, frame, counted = time.monotonic(), 1, None
        while time.monotonic() - began < args.seconds + 2:
            frame += 1
            scene.frame_current = frame
            ui.live_tick()
            if counted is None and time.monotonic() - began > 2:
                counted = (controller.figures.textures, time.monotonic())
            time.sleep(ui.TICK_INTERVAL_S)
        textures_per_second = (controller.figures.textures - counted[0]) / (time.monotonic() - counted[1])
        ticks_ms = np.array(ui.runtime.write_seconds) * 1000
        image = bpy.data.images[f"bench{resolution}"]
        texture = generator.integers(0, 256, (resolution, resolution, 4), dtype=np.uint8)
        pixels = np.zeros(resolution * resolution * 4, np.float32)
        start = time.perf_counter()
        for _ in range(20):
            ui.pixels.texture_to_blender_pixels(texture, out=pixels)
        convert_ms = (time.perf_counter() - start) / 20 * 1000
        start = time.perf_counter()
        for _ in range(20):
            image.pixels.foreach_set(pixels)
            image.update()
        write_ms = (time.perf_counter() - start) / 20 * 1000
        print(
            f"{model.name} {resolution}×{resolution}: tick with a texture write mean {ticks_ms.mean():.2f} ms, "
            f"median {np.median(ticks_ms):.2f} ms, p95 {np.percentile(ticks_ms, 95):.2f} ms (n={len(ticks_ms)}); "
            f"uint8→float+flip {convert_ms:.2f} ms, foreach_set+update {write_ms:.2f} ms; "
            f"live loop {textures_per_second:.1f} textures/s, round trip {controller.figures.latency_ms:.0f} ms, "
            f"dropped {controller.figures.dropped}",
            flush=True,
        )
        ui.shutdown()
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
