"""The teacher's head-pose network on a real photograph under known in-plane rotations.

scikit-image's astronaut (public domain, read from the installed package at run time, never copied here) is turned
about her face's centre by known angles θ, then cropped as the server's `crop: "auto"` crops a frame (the box fitted
to the unturned face, so the turn stays in the crop). A turn in the picture's plane is a change of roll alone: the
network should answer roll(θ) - roll(0) = θ (counter-clockwise positive, as the renderer's roll) and keep yaw and
pitch. The same crops go through mediapipe's face mesh and the canonical-mesh pose solver (models/data/face_pose.py),
the reference real video is labelled with.

Writes OUT/head-pose-rotations.json, OUT/head-pose-rotations.md and OUT/head-pose-rotations.png (the crops).

    python bench/head_pose_rotations.py --pose-network runs/head-pose/head_pose.pt --out docs/teacher-cpu128
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from contract.landmarks import crop_box_from_landmarks, crop_square  # noqa: E402
from server.capture import CropConfig, FaceCropper  # noqa: E402

ANGLES_DEG = (-30.0, -20.0, -10.0, -5.0, 0.0, 5.0, 10.0, 20.0, 30.0)
TRAINED_ROLL_DEG = 14.3  # SyntheticHeads' random motions draw roll within ±0.25 rad: the network never saw more
MESH_SIDE = 256  # the face mesh reads this crop (128 px is small for it); the network reads its own resolution


def turned_crops(photo: np.ndarray, *, angles: tuple[float, ...], side: int) -> list[np.ndarray]:
    """The photo turned by each angle (degrees, counter-clockwise) about its face's centre, cropped to side px."""
    with FaceCropper(config=CropConfig(output_size=side, box_filter=None, max_faces=1, static_images=True)) as finder:
        faces = finder.faces(np.ascontiguousarray(photo))
    if not faces:
        raise SystemExit("no face found in the photograph")
    box = crop_box_from_landmarks(faces[0])
    crops = []
    for angle in angles:
        turned = Image.fromarray(photo).rotate(angle, resample=Image.Resampling.BICUBIC, center=(box[0], box[1]))
        crops.append(crop_square(np.asarray(turned), box, output_size=side))
    return crops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pose-network", type=Path, required=True, metavar="PATH", help="`megalive-train head-pose` checkpoint")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the report and the crops")
    args = parser.parse_args(argv)

    import mediapipe
    import torch
    from skimage.data import astronaut

    from models.data.face_pose import solve_head_pose
    from models.data.prepare import face_mesh_points
    from models.training.common import TrainingError
    from models.training.train_head_pose import head_pose_network_from_checkpoint

    try:
        network = head_pose_network_from_checkpoint(args.pose_network)
    except TrainingError as error:
        print(f"head_pose_rotations: {error}", file=sys.stderr)
        return 2
    crops = turned_crops(astronaut(), angles=ANGLES_DEG, side=MESH_SIDE)
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255  # N×3×256×256
    with torch.inference_mode():
        predicted = network(images).rotation.numpy() * 180 / math.pi  # N×3 yaw, pitch, roll in degrees
    solved = np.full((len(crops), 3), np.nan)
    with mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        for index, crop in enumerate(crops):
            points = face_mesh_points(mesh, crop)
            if points is not None:
                solved[index] = solve_head_pose(points / MESH_SIDE)[:3] * 180 / math.pi
    zero = ANGLES_DEG.index(0.0)
    rows = []
    for index, angle in enumerate(ANGLES_DEG):
        rows.append({
            "angle_deg": angle,
            "network": {"yaw": predicted[index, 0], "pitch": predicted[index, 1], "roll": predicted[index, 2]},
            "network_roll_change": predicted[index, 2] - predicted[zero, 2],
            "face_mesh": {"yaw": solved[index, 0], "pitch": solved[index, 1], "roll": solved[index, 2]},
            "face_mesh_roll_change": solved[index, 2] - solved[zero, 2],
        })  # fmt: skip

    def mean_error(key: str, *, within: float = math.inf) -> float:
        return float(np.nanmean([abs(row[key] - row["angle_deg"]) for row in rows if abs(row["angle_deg"]) <= within]))

    summary = {
        "photo": "scikit-image astronaut (read from the installed package)",
        "pose_network": str(args.pose_network),
        "network_resolution": network.config.resolution,
        "network_roll_change_error_deg": mean_error("network_roll_change"),
        "face_mesh_roll_change_error_deg": mean_error("face_mesh_roll_change"),
        "network_roll_change_error_within_training_range_deg": mean_error("network_roll_change", within=TRAINED_ROLL_DEG),
        "face_mesh_roll_change_error_within_training_range_deg": mean_error("face_mesh_roll_change", within=TRAINED_ROLL_DEG),
        "network_yaw_pitch_spread_deg": float(np.std(predicted[:, :2], axis=0).max()),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report = json.dumps(summary, indent=2, default=float) + "\n"
    (args.out / "head-pose-rotations.json").write_text(report, encoding="utf-8")
    lines = [
        f"Head-pose network {args.pose_network} on the astronaut turned in the picture's plane (degrees):",
        "",
        "| turn θ | network roll − roll(0) | face mesh roll − roll(0) | network yaw | network pitch |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['angle_deg']:+.0f} | {row['network_roll_change']:+.2f} | {row['face_mesh_roll_change']:+.2f} | "
        f"{row['network']['yaw']:+.2f} | {row['network']['pitch']:+.2f} |"
        for row in rows
    ]
    lines += [
        "",
        f"Mean |roll change − θ|: network {summary['network_roll_change_error_deg']:.2f}°, "
        f"face mesh solver {summary['face_mesh_roll_change_error_deg']:.2f}°; within the network's training range (|θ| ≤ "
        f"{TRAINED_ROLL_DEG}°): network {summary['network_roll_change_error_within_training_range_deg']:.2f}°, face mesh "
        f"{summary['face_mesh_roll_change_error_within_training_range_deg']:.2f}°. The network's yaw and pitch spread over the turns "
        f"(largest std) {summary['network_yaw_pitch_spread_deg']:.2f}°.",
    ]
    (args.out / "head-pose-rotations.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sheet = np.concatenate([np.asarray(Image.fromarray(crop).resize((128, 128), Image.Resampling.LANCZOS)) for crop in crops], axis=1)
    Image.fromarray(sheet).save(args.out / "head-pose-rotations.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
