"""Real photographs as drivers of the shipped avatars: does an avatar's mouth open, do its eyes close, when the
photographed face's do?

The photographs: scikit-image's astronaut (public domain) and the six group photos in the demo/ folder of the npm
package @vladmandic/face-api 1.7.15, read from the package that `make nets` keeps (.nets/), never copied into the
repository: their licence is not stated. Every face mediapipe's face mesh finds in them (searched in overlapping windows) is cropped
as the server's `crop: "auto"` crops a webcam frame (the same box fit and square crop), then drives every avatar twice:
as a picture through the image graph, and as its 68 landmarks through the landmarks graph (the landmark solver and the
puppet).

The figure. Mouth openness (the inner lips' gap over the mouth's width) and eye openness (the lids' gap over the eye's
width) are read off 68 landmarks: the photo's from its crop, each output's by running the same face mesh on it. Over
the faces, the Pearson correlation between the photo's openness and the output's, per avatar, averaged over the
avatars; a face mesh that finds no face in an output leaves that output out (how many it found is printed). A
correlation near 1: the avatar opens its mouth when the photographed person does; near 0: it does not follow.

Writes OUT/real-photos.json (the figures) and OUT/astronaut.png (two rows: her crop, then each avatar driven by the
picture; her crop, then each avatar driven by her landmarks); the other photos' sheets, two rows per face, go to
--private (runs/real-photos, outside the repository's tracked files: they show the faces).

    python bench/real_photos.py --out docs/real-photos [--model assets/default/student.onnx]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from contract.landmarks import crop_box_from_landmarks, crop_square, landmarks_in_crop  # noqa: E402
from models.nets.weights import NetWeightsError, net_file, nets_dir  # noqa: E402
from server.capture import CropConfig, FaceCropper  # noqa: E402
from server.engine import SHIPPED_MODEL, Engine  # noqa: E402

FACE_API_PHOTOS = tuple(f"package/demo/sample{index}.jpg" for index in range(1, 7))
MAX_FACES = 8  # per window searched
# iBUG-68: inner-lip pairs (upper, lower) and the mouth corners; per eye, two lid pairs and the corners.
INNER_LIPS = ((61, 67), (62, 66), (63, 65))
MOUTH_CORNERS = (48, 54)
EYES = (((37, 41), (38, 40), (36, 39)), ((43, 47), (44, 46), (42, 45)))


def mouth_openness(points: np.ndarray) -> float:
    """68×2 -> the inner lips' mean gap over the mouth's width."""
    gap = np.mean([np.linalg.norm(points[upper] - points[lower]) for upper, lower in INNER_LIPS])
    return float(gap / max(np.linalg.norm(points[MOUTH_CORNERS[0]] - points[MOUTH_CORNERS[1]]), 1e-6))


def eye_openness(points: np.ndarray) -> float:
    """68×2 -> the lids' mean gap over the eye's width, both eyes averaged."""
    values = []
    for first, second, (outer, inner) in EYES:
        gap = (np.linalg.norm(points[first[0]] - points[first[1]]) + np.linalg.norm(points[second[0]] - points[second[1]])) / 2
        values.append(gap / max(np.linalg.norm(points[outer] - points[inner]), 1e-6))
    return float(np.mean(values))


@dataclass(frozen=True)
class DriverFigures:
    outputs_with_a_face: int  # of faces × avatars
    outputs: int
    mouth_correlation: float  # Pearson r over faces, averaged over avatars
    eye_correlation: float
    mouth_openness_range: tuple[float, float]  # over the outputs read, for scale beside the photos'
    eye_openness_range: tuple[float, float]


@dataclass(frozen=True)
class RealPhotoReport:
    model: str
    photos: list[str]
    faces: int
    photo_mouth_openness_range: tuple[float, float]
    photo_eye_openness_range: tuple[float, float]
    image: DriverFigures
    landmarks: DriverFigures


def read_photos(nets: Path) -> dict[str, np.ndarray]:
    from skimage.data import astronaut

    photos = {"astronaut": np.ascontiguousarray(astronaut())}
    try:
        package = net_file("face-api-package", folder=nets)  # the pinned package, checksum checked
    except NetWeightsError as error:
        print(f"real_photos: {error}: the astronaut alone", file=sys.stderr)
        return photos
    with tarfile.open(package) as archive:
        for name in FACE_API_PHOTOS:
            member = archive.extractfile(name)
            assert member is not None, name
            photos[Path(name).stem] = np.ascontiguousarray(np.asarray(Image.open(io.BytesIO(member.read())).convert("RGB")))
    return photos


def faces_in_photo(finder: FaceCropper, photo: np.ndarray, *, window: int = 512) -> list[np.ndarray]:
    """Every face's 68 landmarks (source pixels) in a photo of any size: the face mesh's detector wants a face to fill
    a good part of its input, so a group photo is searched in overlapping windows too; a face found twice (its
    centroid within a third of its size of one found before) is kept once."""
    height, width = photo.shape[:2]
    found = list(finder.faces(photo))
    if max(height, width) > window:
        for top in range(0, max(height - window, 0) + 1, window // 2):
            for left in range(0, max(width - window, 0) + 1, window // 2):
                part = np.ascontiguousarray(photo[top : top + window, left : left + window])
                found += [face + (left, top) for face in finder.faces(part)]
    kept: list[np.ndarray] = []
    for face in found:
        size = float(np.ptp(face, axis=0).max())
        if all(np.linalg.norm(face.mean(axis=0) - other.mean(axis=0)) > size / 3 for other in kept):
            kept.append(face)
    return kept


def correlation(first: list[float], second: list[float]) -> float:
    if len(first) < 3 or np.std(first) == 0 or np.std(second) == 0:
        return float("nan")
    return float(np.corrcoef(first, second)[0, 1])


def driver_figures(photo_values: list[tuple[float, float]], outputs: list[list[tuple[float, float] | None]]) -> DriverFigures:
    """photo_values: per face (mouth, eye); outputs: per face, per avatar, the output's (mouth, eye) or None."""
    avatars = len(outputs[0])
    mouth_r, eye_r, read = [], [], []
    for avatar in range(avatars):
        pairs = [(photo, face[avatar]) for photo, face in zip(photo_values, outputs) if face[avatar] is not None]
        read += [output for _, output in pairs]
        mouth_r.append(correlation([p[0] for p, _ in pairs], [o[0] for _, o in pairs]))
        eye_r.append(correlation([p[1] for p, _ in pairs], [o[1] for _, o in pairs]))
    mouths, eyes = [o[0] for o in read], [o[1] for o in read]
    return DriverFigures(
        outputs_with_a_face=len(read),
        outputs=len(outputs) * avatars,
        mouth_correlation=float(np.nanmean(mouth_r)),
        eye_correlation=float(np.nanmean(eye_r)),
        mouth_openness_range=(float(min(mouths)), float(max(mouths))) if mouths else (float("nan"),) * 2,
        eye_openness_range=(float(min(eyes)), float(max(eyes))) if eyes else (float("nan"),) * 2,
    )


def sheet(tiles: list[np.ndarray], columns: int) -> Image.Image:
    size = tiles[0].shape[0]
    rows = -(-len(tiles) // columns)
    canvas = Image.new("RGB", (columns * size, rows * size), "white")
    for index, tile in enumerate(tiles):
        canvas.paste(Image.fromarray(tile), ((index % columns) * size, (index // columns) * size))
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="an exported student with image and landmarks graphs")
    parser.add_argument("--out", type=Path, required=True, help="folder for real-photos.json and the astronaut's sheet")
    parser.add_argument("--nets", type=Path, default=nets_dir(), help="the folder `make nets` fills ($MEGALIVE_NETS_DIR)")
    parser.add_argument(
        "--private", type=Path, default=REPO_ROOT / "runs" / "real-photos", help="folder for the other photos' sheets (never committed)"
    )
    args = parser.parse_args(argv)

    engine = Engine(model_path=args.model, max_batch=8)
    if "landmarks" not in engine.drivers:
        print(f"real_photos: {args.model} has no landmarks driver", file=sys.stderr)
        return 2
    side = engine.resolution[0]
    avatars = np.arange(engine.card.num_avatars, dtype=np.int64)
    finder = FaceCropper(config=CropConfig(output_size=side, box_filter=None, max_faces=MAX_FACES, static_images=True))
    reader = FaceCropper(config=CropConfig(output_size=side, box_filter=None, max_faces=1, static_images=True))
    photo_values: list[tuple[float, float]] = []
    read: dict[str, list[list[tuple[float, float] | None]]] = {"image": [], "landmarks": []}
    args.out.mkdir(parents=True, exist_ok=True)
    args.private.mkdir(parents=True, exist_ok=True)
    photos = read_photos(args.nets)
    for name, photo in photos.items():
        tiles = []
        for face in faces_in_photo(finder, photo):
            box = crop_box_from_landmarks(face)
            crop = crop_square(photo, box, output_size=side)
            landmarks = landmarks_in_crop(face, box)  # 68×2 in [0, 1] over the crop
            photo_values.append((mouth_openness(landmarks), eye_openness(landmarks)))
            signals = {
                "image": np.repeat(crop.transpose(2, 0, 1)[None].astype(np.float32) / 255, len(avatars), axis=0),
                "landmarks": np.repeat(landmarks[None].astype(np.float32), len(avatars), axis=0),
            }
            for kind, signal in signals.items():
                output = engine.run(signal, avatars, kind=kind)
                pictures = (output.rgb.clip(0, 1).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)  # A×S×S×3
                tiles += [crop, *pictures]  # a row per driver kind: the crop, then every avatar
                values = []
                for picture in pictures:
                    found = reader.faces(np.ascontiguousarray(picture))
                    values.append((mouth_openness(found[0] / side), eye_openness(found[0] / side)) if found else None)
                read[kind].append(values)
        columns = 1 + len(avatars)
        if tiles:
            image = sheet(tiles, columns).resize((columns * 128, len(tiles) // columns * 128), Image.BILINEAR)
            image.save(args.out / f"{name}.png" if name == "astronaut" else args.private / f"{name}.png")
        print(f"{name}: {len(tiles) // (2 * columns)} faces")
    finder.close()
    reader.close()
    mouths, eyes = [v[0] for v in photo_values], [v[1] for v in photo_values]
    report = RealPhotoReport(
        model=str(args.model),
        photos=list(photos),
        faces=len(photo_values),
        photo_mouth_openness_range=(min(mouths), max(mouths)),
        photo_eye_openness_range=(min(eyes), max(eyes)),
        image=driver_figures(photo_values, read["image"]),
        landmarks=driver_figures(photo_values, read["landmarks"]),
    )
    temporary = args.out / ".real-photos.json.tmp"
    temporary.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    temporary.replace(args.out / "real-photos.json")
    print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
