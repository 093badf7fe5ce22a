"""Cost of the shared live controller's tick (client/live.py, what the Blender timer and the Unreal
post-tick callback call) while the server is gone: the issue asks for at most 1 ms per tick.

Starts a real server with a model, goes live streaming a changing driver frame, stops the server,
then ticks for a few seconds (through "gone", back-off and background reconnect attempts) and prints
the tick time percentiles. Figures only; nothing passes or fails.

    .venv/bin/python bench/live_tick_server_gone.py assets/default/student.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from client.live import LiveConfig, LiveController  # noqa: E402
from client.protocol import raw_buffer_from_array  # noqa: E402
from server.engine import Engine  # noqa: E402
from server.service import AvatarService, ServiceConfig  # noqa: E402


class ChangingFrames:
    """A new random driver frame every call, like a playing video."""

    def __init__(self, resolution: int) -> None:
        self.frames = [np.random.default_rng(i).integers(0, 256, (resolution, resolution, 3), dtype=np.uint8) for i in range(4)]
        self.count = 0

    def frame_key(self) -> int:
        self.count += 1
        return self.count

    def payload(self, key: int):
        return raw_buffer_from_array(self.frames[key % len(self.frames)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0, help="ticking time after the server stops")
    args = parser.parse_args()
    engine = Engine(model_path=args.model)
    service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    address = service.start()
    controller = LiveController(config=LiveConfig(server=address, timeout_s=1.0))
    source = ChangingFrames(engine.resolution[0])
    assert controller.connect() and controller.start_live(avatar=0)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        controller.tick(source)
        time.sleep(0.005)
    service.stop()
    ticks, phases = [], set()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        controller.tick(source)
        ticks.append(time.perf_counter() - began)
        phases.add(controller.phase)
        time.sleep(0.001)
    milliseconds = np.array(ticks) * 1000
    print(
        f"server gone: {len(ticks)} ticks, mean {milliseconds.mean():.3f} ms, p99 {np.percentile(milliseconds, 99):.3f} ms, "
        f"max {milliseconds.max():.3f} ms; phases seen {sorted(phases)}; status: {controller.phase} {controller.detail}"
    )
    controller.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
