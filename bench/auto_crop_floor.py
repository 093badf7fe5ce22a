"""The face-size floor of the server's auto-crop (``crop: "auto"``, server/capture.py): the smallest face it still
finds in a webcam-sized frame, with the face mesh alone and with the small-face pass (mediapipe's full-range
detector, then the mesh on an upscaled cut).

A real photograph (scikit-image's astronaut, one frontal face) is scaled down onto a grey canvas so that the face
is W px wide, for W from ``--largest`` down to ``--smallest``, at three places in the frame (centre, upper left,
lower right). Face width = the distance between the jaw's two ends (iBUG points 0 and 16, about ear to ear at the
cheekbones), from the mesh on the full-size photo. A face counts as found when a fresh cropper (video mode, as a
session runs it) finds it in each of ``--frames`` frames and its landmarks lie within 5 % of W of where the scaled
full-size landmarks put them (so a face invented elsewhere does not count). The floor is the smallest W at which it
is found, and at every larger W, at all three places. Also prints the crop time per frame at each size and on a frame
with no face (this machine, one run; never a pass/fail). Nothing passes or fails.

    .venv/bin/python bench/auto_crop_floor.py [--canvas 640x480] [--largest 120] [--smallest 16] [--step 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from server.capture import CropConfig, FaceCropper, NoFaceError  # noqa: E402

PLACES = {"centre": (0.5, 0.5), "upper left": (0.25, 0.3), "lower right": (0.75, 0.7)}  # face centre, fraction of the canvas
MAX_LANDMARK_ERROR = 0.05  # of the face width: farther off is not the face that was placed


@dataclass(frozen=True)
class Photo:
    pixels: np.ndarray  # H×W×3 uint8
    landmarks: np.ndarray  # 68×2 photo pixels (the mesh on the full-size photo)

    @property
    def face_width(self) -> float:
        return float(np.linalg.norm(self.landmarks[16] - self.landmarks[0]))


def astronaut() -> Photo:
    from skimage import data

    pixels = np.ascontiguousarray(data.astronaut())
    with FaceCropper(config=CropConfig(output_size=128, box_filter=None, static_images=True, small_faces=False)) as finder:
        (landmarks,) = finder.faces(pixels)
    return Photo(pixels=pixels, landmarks=landmarks)


def place(photo: Photo, *, width_px: float, centre: tuple[float, float], canvas: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The photo scaled so its face is ``width_px`` wide with the face's centre at ``centre`` (canvas pixels), on a
    grey canvas (width, height); returns the frame and where its 68 landmarks are."""
    scale = width_px / photo.face_width
    offset = np.asarray(centre) - photo.landmarks.mean(axis=0) * scale  # canvas = scale·photo + offset
    inverse = (1 / scale, 0.0, -offset[0] / scale, 0.0, 1 / scale, -offset[1] / scale)  # canvas -> photo
    frame = Image.fromarray(photo.pixels).transform(
        canvas, Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR, fillcolor=(120, 120, 120)
    )
    return np.ascontiguousarray(np.asarray(frame)), photo.landmarks * scale + offset


def found(frame: np.ndarray, truth: np.ndarray, *, small_faces: bool, frames: int, width_px: float) -> tuple[bool, float]:
    """Whether a fresh cropper finds the placed face in every frame, and its mean time per frame after the first (ms:
    the first also builds mediapipe's graphs)."""
    with FaceCropper(config=CropConfig(output_size=128, box_filter=None, small_faces=small_faces)) as cropper:
        began = time.perf_counter()
        for index in range(frames):
            if index == 1:
                began = time.perf_counter()
            try:
                result = cropper(frame, index / 30.0)
            except NoFaceError:
                return False, 0.0
            if not result.face_found:
                return False, 0.0
            side = result.box[2]
            landmarks = result.landmarks * side + (result.box[0] - side / 2, result.box[1] - side / 2)  # crop -> frame px
            if float(np.linalg.norm(landmarks - truth, axis=1).mean()) > MAX_LANDMARK_ERROR * width_px:
                return False, 0.0
    return True, 1000.0 * (time.perf_counter() - began) / max(1, frames - 1)


def no_face_ms(canvas: tuple[int, int], *, small_faces: bool, frames: int) -> float:
    """Mean time (ms) a cropper spends on a frame with no face in it (noise: nothing to find, every pass runs)."""
    frame = np.random.default_rng(0).integers(0, 256, (canvas[1], canvas[0], 3), dtype=np.uint8)
    with FaceCropper(config=CropConfig(output_size=128, box_filter=None, small_faces=small_faces)) as cropper:
        times = []
        for index in range(frames + 1):
            began = time.perf_counter()
            try:
                cropper(frame, index / 30.0)
            except NoFaceError:
                pass
            times.append(time.perf_counter() - began)
    return 1000.0 * float(np.mean(times[1:]))  # the first frame also builds the graphs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canvas", default="640x480", metavar="WxH", help="frame size in pixels (default 640x480, a webcam)")
    parser.add_argument("--largest", type=int, default=120, help="largest face width tried, px (default 120)")
    parser.add_argument("--smallest", type=int, default=16, help="smallest face width tried, px (default 16)")
    parser.add_argument("--step", type=int, default=2, help="face width step, px (default 2)")
    parser.add_argument("--frames", type=int, default=3, help="frames per try; all must find the face (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        canvas = tuple(int(part) for part in args.canvas.lower().split("x"))
        if len(canvas) != 2 or min(canvas) < 64:
            raise ValueError
    except ValueError:
        print(f"--canvas must be WxH with both at least 64, got {args.canvas!r}", file=sys.stderr)
        return 2
    if not 4 <= args.smallest <= args.largest or args.step < 1 or args.frames < 1:
        print("need 4 <= --smallest <= --largest, --step >= 1 and --frames >= 1", file=sys.stderr)
        return 2
    photo = astronaut()
    widths = list(range(args.largest, args.smallest - 1, -args.step))
    passes = {"mesh alone": False, "with the small-face pass": True}
    table: dict[str, dict[int, bool]] = {name: {} for name in passes}
    timings: dict[str, dict[int, float]] = {name: {} for name in passes}
    print(f"canvas {canvas[0]}×{canvas[1]}, face width = jaw end to jaw end (the full-size photo's face: {photo.face_width:.1f} px)")
    print(f"{'width px':>8}  " + "  ".join(f"{name:>26}" for name in passes))
    for width_px in widths:
        row = []
        for name, small_faces in passes.items():
            everywhere, times = True, []
            for fx, fy in PLACES.values():
                frame, truth = place(photo, width_px=width_px, centre=(fx * canvas[0], fy * canvas[1]), canvas=canvas)
                ok, ms = found(frame, truth, small_faces=small_faces, frames=args.frames, width_px=width_px)
                everywhere &= ok
                times.append(ms)
            table[name][width_px] = everywhere
            if everywhere:
                timings[name][width_px] = float(np.mean(times))
            row.append(f"{'found' if everywhere else '-':>14} {timings[name].get(width_px, 0.0):>8.1f} ms" if everywhere else f"{'-':>26}")
        print(f"{width_px:>8}  " + "  ".join(row))
    floors = {}
    for name in passes:
        floor = None
        for width_px in widths:  # largest first: the floor is where the unbroken run of finds ends
            if not table[name][width_px]:
                break
            floor = width_px
        floors[name] = floor
        print(f"floor, {name}: " + (f"{floor} px" if floor is not None else f"none found at {widths[0]} px or below"))
    empty_ms = {name: no_face_ms(canvas, small_faces=small_faces, frames=max(args.frames, 10)) for name, small_faces in passes.items()}
    print("a frame with no face: " + ", ".join(f"{ms:.1f} ms {name}" for name, ms in empty_ms.items()))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "canvas": list(canvas),
                    "photo_face_width_px": photo.face_width,
                    "floors_px": floors,
                    "found": {name: {str(w): ok for w, ok in found_at.items()} for name, found_at in table.items()},
                    "no_face_ms_per_frame": empty_ms,
                    "ms_per_frame": {name: {str(w): ms for w, ms in times.items()} for name, times in timings.items()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
