"""Provenance figures (README "Provenance", issue 15): the texture watermark's detection rate over 200 frames of the
shipped model after PNG, JPEG quality 75 and a 50 % resize, false positives on the unmarked frames and driver frames,
its PSNR, the embedder's cost per texture at 256 and 512 px, the library's own embedder against the vectorised one
(server/provenance.py), and the live frame rate at the model's resolution with and without it (interleaved, one run).
Writes a JSON report and a side-by-side picture (original | watermarked | difference × 20) to docs/provenance/;
``--embed-only`` prints the embedder's cost and the live frame rates only, writing nothing. Prints figures; never passes
or fails on them."""

from __future__ import annotations

import argparse
import datetime
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from server import imaging, provenance
from server.bench import machine_description, measure_watermark_cost
from server.demo import read_clip
from server.engine import SHIPPED_MODEL, Engine


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    encoded = io.BytesIO()
    Image.fromarray(rgb).save(encoded, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(encoded.getvalue())).convert("RGB"))


def png(rgba: np.ndarray) -> np.ndarray:
    encoded = io.BytesIO()
    Image.fromarray(rgba).save(encoded, format="PNG")
    return np.asarray(Image.open(io.BytesIO(encoded.getvalue())))


def half(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((width // 2, height // 2), Image.BILINEAR))


@dataclass(frozen=True)
class EmbedderCost:
    """Milliseconds per texture of one side, the library's embedder and the vectorised one, interleaved."""

    side: int
    textures: int
    rounds: int
    library_ms: float  # median wall-clock time per texture
    vectorised_ms: float
    speedup: float  # median over rounds of library time / vectorised time
    library_cpu_ms: float  # median CPU time of the calling thread: less moved by other jobs on the box
    vectorised_cpu_ms: float
    max_level_difference: int  # the two outputs compared, uint8
    differing_values: int
    values: int


def measure_embedders(textures: list[tuple[int, np.ndarray]], side: int, rounds: int) -> EmbedderCost:
    """Both embedders on the same textures (resized to side×side), alternating which goes first each round."""
    sized = [(avatar, cv2.resize(t, (side, side), interpolation=cv2.INTER_CUBIC) if t.shape[0] != side else t) for avatar, t in textures]
    embedders = {"library": provenance.watermark_texture_library, "vectorised": provenance.watermark_texture}
    wall: dict[str, list[float]] = {name: [] for name in embedders}
    cpu: dict[str, list[float]] = {name: [] for name in embedders}
    first_avatar, first_texture = sized[0]
    for embed in embedders.values():
        embed(first_texture, first_avatar)  # untimed: the first calls load modules
    for round_index in range(rounds):
        names = list(embedders) if round_index % 2 == 0 else list(reversed(embedders))
        for name in names:
            began, began_cpu = time.perf_counter(), time.thread_time()
            for avatar, texture in sized:
                embedders[name](texture, avatar)
            wall[name].append((time.perf_counter() - began) / len(sized))
            cpu[name].append((time.thread_time() - began_cpu) / len(sized))
    differences = [
        np.abs(provenance.watermark_texture(t, a).astype(np.int16) - provenance.watermark_texture_library(t, a)) for a, t in sized
    ]
    library, vectorised = np.array(wall["library"]), np.array(wall["vectorised"])
    return EmbedderCost(
        side=side,
        textures=len(sized),
        rounds=rounds,
        library_ms=float(np.median(library) * 1e3),
        vectorised_ms=float(np.median(vectorised) * 1e3),
        speedup=float(np.median(library / vectorised)),
        library_cpu_ms=float(np.median(cpu["library"]) * 1e3),
        vectorised_cpu_ms=float(np.median(cpu["vectorised"]) * 1e3),
        max_level_difference=int(max(d.max() for d in differences)),
        differing_values=int(sum(np.count_nonzero(d) for d in differences)),
        values=int(sum(d.size for d in differences)),
    )


def rendered_textures(engine: Engine, drivers: list[np.ndarray], count: int) -> list[tuple[int, np.ndarray]]:
    """(avatar, H×W×4 uint8 texture) of the shipped model driven by spaced frames of its clip."""
    out = []
    for index in range(count):
        driver = imaging.resize_rgb(drivers[index * 7 % len(drivers)], engine.resolution)
        avatar = index % engine.num_avatars
        output = engine.run(imaging.to_engine_batch([driver]), np.array([avatar]))
        out.append((avatar, imaging.to_texture_pixels(output.rgb, output.alpha)[0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the interleaved frame-rate phase")
    parser.add_argument("--out", type=Path, default=Path("docs/provenance"))
    parser.add_argument("--embed-rounds", type=int, default=20, help="interleaved rounds of the embedder timing, per size")
    parser.add_argument("--embed-only", action="store_true", help="only the embedder timing and live frame rates; write nothing")
    args = parser.parse_args()
    engine = Engine(model_path=SHIPPED_MODEL)
    drivers, _ = read_clip(SHIPPED_MODEL.parent / "driver.mp4")
    textures = rendered_textures(engine, drivers, 4)
    embedders = [asdict(measure_embedders(textures, side, args.embed_rounds)) for side in (256, 512)]
    if args.embed_only:
        cost = measure_watermark_cost(engine, args.seconds)
        live = {"without": cost.fps_without, "with": cost.fps_with, "ratio": cost.ratio}
        print(json.dumps({"machine": machine_description(), "embedder": embedders, "live_fps": live}, indent=2))
        return
    found = {"png": 0, "jpeg75": 0, "half": 0}
    false_positives, psnr, sample = 0, [], None
    for index in range(args.frames):
        driver = imaging.resize_rgb(drivers[index % len(drivers)], engine.resolution)
        avatar = index % engine.num_avatars
        output = engine.run(imaging.to_engine_batch([driver]), np.array([avatar]))
        texture = imaging.to_texture_pixels(output.rgb, output.alpha)[0]
        marked = provenance.watermark_texture(texture, avatar)
        psnr.append(10 * np.log10(255.0**2 / np.mean((marked[:, :, :3].astype(float) - texture[:, :, :3]) ** 2)))
        rgb = np.ascontiguousarray(marked[:, :, :3])
        found["png"] += provenance.read_watermark(png(marked)) == avatar
        found["jpeg75"] += provenance.read_watermark(jpeg(rgb, 75)) == avatar
        found["half"] += provenance.read_watermark(half(rgb)) == avatar
        false_positives += provenance.read_watermark(texture) is not None
        false_positives += provenance.read_watermark(driver) is not None
        if index == 3:
            sample = (texture, marked)
    cost = measure_watermark_cost(engine, args.seconds)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "model": engine.card.name,
        "resolution": list(engine.resolution),
        "method": f"invisible-watermark 0.2.0 dwtDctSvd, U plane, block {provenance.BLOCK}, scale {provenance.SCALE * 255:.0f}/255",
        "payload_bits": provenance.PAYLOAD_BITS,
        "frames": args.frames,
        "detection_rate": {key: value / args.frames for key, value in found.items()},
        "false_positives": {"count": false_positives, "unmarked_pictures": 2 * args.frames},
        "psnr_db": {"mean": float(np.mean(psnr)), "min": float(np.min(psnr))},
        "embedder": embedders,
        "live_fps": {"without": cost.fps_without, "with": cost.fps_with, "ratio": cost.ratio, "target": 0.85},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "watermark.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    assert sample is not None
    original, marked = (np.ascontiguousarray(p[:, :, :3]) for p in sample)
    difference = np.clip(np.abs(marked.astype(int) - original) * 20, 0, 255).astype(np.uint8)
    Image.fromarray(np.concatenate([original, marked, difference], axis=1)).save(args.out / "side-by-side.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
