"""One-shot enrollment through a real server: how long `enroll` takes on this machine, and what a photograph becomes.

A contract-v2 model is served in this process (its own avatars, and a fresh bank in a temporary folder); a client
enrolls scikit-image's astronaut (public domain) --repeats times under new names over loopback, and the server's own
figure (face search, crop, embedder, bank written) and the client's round trip are printed (median and worst). Then the
enrolled astronaut is driven by frames of the shipped driver clip, as any avatar is: OUT/astronaut-enrolled.png shows
per column a driver frame, then the astronaut avatar driven by it (the first column: her aligned crop, what the
embedder saw). Figures also go to OUT/enrollment.json.

    python bench/enrollment.py --model runs/v2/student.onnx --out docs/enrollment [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from client.client import AvatarClient, Texture  # noqa: E402
from server.engine import Engine  # noqa: E402
from server.enrollment import portrait_crops  # noqa: E402
from server.service import AvatarService, ServiceConfig  # noqa: E402

CONSENT = "Public-domain NASA photograph of Eileen Collins, enrolled to measure MegaLive's enrollment (benchmark only)."
DRIVER_CLIP = REPO_ROOT / "assets" / "default" / "driver.mp4"
COLUMNS = 7  # driver frames shown


def clip_frames(count: int) -> list[np.ndarray]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(DRIVER_CLIP))
    width, height = next(reader)["size"]
    frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy() for raw in reader]
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, count).round()]


def drive(client: AvatarClient, avatar: int, frames: list[np.ndarray]) -> list[np.ndarray]:
    session = client.open(avatar=avatar, output_format="rgb8")
    outputs = []
    for frame in frames:
        seq = client.send_frame(session, frame)
        deadline = time.monotonic() + 30
        texture = None
        while texture is None and time.monotonic() < deadline:
            texture = next((e for e in client.poll(timeout_ms=50) if isinstance(e, Texture) and e.seq == seq), None)
        assert texture is not None, "no texture"
        outputs.append(texture.buffer.array()[:, :, :3].copy())
    client.close_session(session)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a contract-v2 model (.onnx with its bank and embedder)")
    parser.add_argument("--out", type=Path, required=True, help="folder for enrollment.json and astronaut-enrolled.png")
    parser.add_argument("--repeats", type=int, default=5, help="enrollments timed")
    args = parser.parse_args(argv)
    from skimage.data import astronaut

    photo = astronaut()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        engine = Engine(model_path=args.model, bank_path=Path(scratch) / "bench.avatars.npz")
        service = AvatarService(engine=engine, config=ServiceConfig(bind=f"ipc://{scratch}/bench.sock"))
        address = service.start()
        try:
            server_s, round_trip_s, avatar = [], [], -1
            with AvatarClient(address=address, timeout_s=120, name="bench-enrollment") as client:
                client.hello()
                for repeat in range(args.repeats):
                    began = time.perf_counter()
                    enrolled = client.enroll(name=f"astronaut-{repeat + 1}", consent=CONSENT, portraits=[photo])
                    round_trip_s.append(time.perf_counter() - began)
                    server_s.append(enrolled.seconds)
                    avatar = enrolled.avatar
                drivers = clip_frames(COLUMNS)
                outputs = drive(client, avatar, drivers)
        finally:
            service.stop()
    crop = portrait_crops([photo], size=outputs[0].shape[0])[0][0]
    size = outputs[0].shape[0]
    drivers = [np.asarray(Image.fromarray(frame).resize((size, size))) for frame in drivers]
    canvas = Image.new("RGB", ((COLUMNS + 1) * size, 2 * size), "white")
    canvas.paste(Image.fromarray(crop), (0, size))
    for column, (driver, output) in enumerate(zip(drivers, outputs), start=1):
        canvas.paste(Image.fromarray(driver), (column * size, 0))
        canvas.paste(Image.fromarray(output), (column * size, size))
    canvas.save(args.out / "astronaut-enrolled.png")
    figures = {
        "model": str(args.model),
        "repeats": args.repeats,
        "server_seconds": {"median": statistics.median(server_s), "worst": max(server_s)},
        "round_trip_seconds": {"median": statistics.median(round_trip_s), "worst": max(round_trip_s)},
    }
    (args.out / "enrollment.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(
        f"one-shot enrollment of a 512×512 photograph, {args.repeats} times: server {figures['server_seconds']['median']:.2f} s median "
        f"({figures['server_seconds']['worst']:.2f} worst), round trip {figures['round_trip_seconds']['median']:.2f} s median "
        f"({figures['round_trip_seconds']['worst']:.2f} worst); sheet {args.out / 'astronaut-enrolled.png'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
