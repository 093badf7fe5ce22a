"""One-shot enrollment through a real server: how long `enroll` takes on this machine, and what a photograph becomes.

A contract-v2 model is served in this process (its own avatars, and a fresh bank in a temporary folder); a client
enrolls scikit-image's astronaut (public domain) --repeats times under new names over loopback, one-shot, and the
server's own figure (face search, crop, embedder, bank written) and the client's round trip are printed (median and
worst). Then she is enrolled once more with --refine-steps of few-shot refinement, which the server runs in its separate
process (megalive-train enroll), and the job's own seconds are printed. Both avatars are driven by frames of the
shipped driver clip, as any avatar is: OUT/astronaut-enrolled.png shows per column a driver frame, then the one-shot
avatar, then the refined one (the first column: her aligned crop, what the embedder saw). Figures also go to
OUT/enrollment.json.

    python bench/enrollment.py --model assets/default/student.onnx --out docs/enrollment [--repeats 5] [--refine-steps 120]
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
    parser.add_argument("--refine-steps", type=int, default=120, help="few-shot refinement steps of the last enrollment")
    args = parser.parse_args(argv)
    from skimage.data import astronaut

    photo = astronaut()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        engine = Engine(model_path=args.model, bank_path=Path(scratch) / "bench.avatars.npz")
        service = AvatarService(engine=engine, config=ServiceConfig(bind=f"ipc://{scratch}/bench.sock", refine_steps=0))
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
                refined = client.enroll(name="astronaut-refined", consent=CONSENT, portraits=[photo], refine_steps=args.refine_steps)
                if refined.refinement_job is None:
                    raise SystemExit(f"no refinement: {refined.refinement_unavailable}")
                while (job := next(j for j in client.refinement_jobs() if j["job"] == refined.refinement_job))["state"] in (
                    "queued",
                    "running",
                ):
                    time.sleep(1.0)
                if job["state"] != "done":
                    raise SystemExit(f"refinement {job['state']}: {job['error']}")
                time.sleep(1.5)  # the service loop swaps the refined tensor in within a second of the job's end
                drivers = clip_frames(COLUMNS)
                outputs = drive(client, avatar, drivers)
                refined_outputs = drive(client, refined.avatar, drivers)
        finally:
            service.stop()
    crop = portrait_crops([photo], size=outputs[0].shape[0])[0][0]
    size = outputs[0].shape[0]
    drivers = [np.asarray(Image.fromarray(frame).resize((size, size))) for frame in drivers]
    canvas = Image.new("RGB", ((COLUMNS + 1) * size, 3 * size), "white")
    canvas.paste(Image.fromarray(crop), (0, size))
    for column, (driver, output, refined_output) in enumerate(zip(drivers, outputs, refined_outputs), start=1):
        canvas.paste(Image.fromarray(driver), (column * size, 0))
        canvas.paste(Image.fromarray(output), (column * size, size))
        canvas.paste(Image.fromarray(refined_output), (column * size, 2 * size))
    canvas.save(args.out / "astronaut-enrolled.png")
    figures = {
        "model": str(args.model),
        "repeats": args.repeats,
        "server_seconds": {"median": statistics.median(server_s), "worst": max(server_s)},
        "round_trip_seconds": {"median": statistics.median(round_trip_s), "worst": max(round_trip_s)},
        "refinement": {
            "frames": 1,
            "steps": job["steps"],
            "seconds": job["seconds"],
            "first_loss": job["first_loss"],
            "last_loss": job["loss"],
        },
    }
    (args.out / "enrollment.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(
        f"one-shot enrollment of a 512×512 photograph, {args.repeats} times: server {figures['server_seconds']['median']:.2f} s median "
        f"({figures['server_seconds']['worst']:.2f} worst), round trip {figures['round_trip_seconds']['median']:.2f} s median "
        f"({figures['round_trip_seconds']['worst']:.2f} worst); refined ({job['steps']} steps, 1 frame) in {job['seconds']:.0f} s by the "
        f"server's job, loss {job['first_loss']:.4f} -> {job['loss']:.4f}; sheet {args.out / 'astronaut-enrolled.png'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
