"""Does the teacher open the mouth? Each held-out source is driven twice by the same driver head, mouth closed and
with jawOpen raised, and what changes is measured:

- z change: |z(open) - z(closed)| / |z(closed)|, E_mtn's expression code of the two drivers;
- warp change: the mean length of the difference of W_c→d's two delta fields (normalised volume units; one voxel is
  2/S), against the fields' own mean length;
- mouth change of the outputs: the mean absolute difference of the two outputs inside the mouth box (the open
  target's mouth landmarks, padded as the benchmark's region metrics pad them), against the same figure of the two
  targets (the source's identity rendered by SyntheticHeads with the driver's two motions); their ratio is the
  jaw response (1: the output's mouth changes as much as the truth's; 0: not at all);
- mouth PSNR (the benchmark's, per pair, averaged) of the open output against the open target, and of the closed output against it.

Outputs and targets are compared as the benchmark compares them: each foreground on white by its own mask.

Sources and drivers are new identities (seeds far from the training pool's), drivers turned at random within the
renderer's clip range, every other control 0. With --trained-identities they are the identities the checkpoint's run
trained on instead (each source driven by the next one in its pool): whether the teacher can open a mouth at all, on
faces it has learned, apart from whether it generalises. Writes OUT/jaw-response.json and OUT/jaw-response.png (rows: source,
driver closed, driver open, output closed, output open, target open; the last three on white).

    python bench/teacher_jaw_response.py --model runs/teacher-cpu128-expressions/checkpoint.pt --out docs/teacher-cpu128
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from contract.arkit import ARKIT_INDEX  # noqa: E402
from models.blocks import on_white  # noqa: E402
from models.checkpoints import load_base, load_checkpoint  # noqa: E402
from models.data.heads import HeadMotion, Identity, SyntheticHeads, contact_sheet, neutral_motion, sample_identities  # noqa: E402
from models.data.synthetic_pairs import identity_pool  # noqa: E402
from models.evaluation import region_psnr  # noqa: E402
from models.face_regions import REGION_NAMES, region_masks  # noqa: E402
from models.losses import masked_l1  # noqa: E402
from models.training.common import TrainingError  # noqa: E402

SOURCE_SEED, DRIVER_SEED, POSE_SEED = 900_001, 900_002, 900_003  # far from any training pool's seed


def _driver_motions(count: int, *, jaw: float, generator: torch.Generator) -> tuple[HeadMotion, HeadMotion]:
    """The same random head poses twice: mouth closed, and jawOpen = ``jaw``."""
    closed = neutral_motion(count)
    closed = dataclasses.replace(
        closed,
        yaw=(torch.rand(count, generator=generator) * 2 - 1) * 0.3,
        pitch=(torch.rand(count, generator=generator) * 2 - 1) * 0.15,
        roll=(torch.rand(count, generator=generator) * 2 - 1) * 0.1,
    )
    expression = closed.expression.clone()
    expression[:, ARKIT_INDEX["jawOpen"]] = jaw
    return closed, dataclasses.replace(closed, expression=expression)


def _trained_identities(model: Path, count: int) -> tuple[Identity, Identity]:
    """Sources and drivers from the SyntheticHeads identity pool ``model``'s run trained on: source i is the pool's
    identity i (cycling), its driver the next one. Raises TrainingError for a run on other data."""
    train = load_checkpoint(model)["train_config"]
    if train["data"] != "synthetic":
        raise TrainingError(f"--trained-identities: {model} trained on {train['data']}, not on SyntheticHeads identities")
    pool = identity_pool(train["identities"], seed=train["seed"])
    order = torch.arange(count) % train["identities"]  # count
    return pool[order], pool[(order + 1) % train["identities"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, metavar="PT", help="`megalive-train base` checkpoint")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for jaw-response.json and .png")
    parser.add_argument("--pairs", type=int, default=16, metavar="N", help="sources (each with its own driver) [1-256]")
    parser.add_argument("--jaw", type=float, default=0.9, metavar="X", help="jawOpen of the open driver (0-1]")
    parser.add_argument(
        "--trained-identities", action="store_true", help="sources and drivers from the run's own training pool, not new identities"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.pairs <= 256 or not 0 < args.jaw <= 1:
        print("error: --pairs must be in [1, 256] and --jaw in (0, 1]", file=sys.stderr)
        return 2
    try:
        model = load_base(args.model).eval()
        size = model.config.resolution
        if args.trained_identities:
            sources, drivers = _trained_identities(args.model, args.pairs)
        else:
            sources = sample_identities(args.pairs, generator=torch.Generator().manual_seed(SOURCE_SEED))
            drivers = sample_identities(args.pairs, generator=torch.Generator().manual_seed(DRIVER_SEED))
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    renderer = SyntheticHeads(resolution=size)
    closed, opened = _driver_motions(args.pairs, jaw=args.jaw, generator=torch.Generator().manual_seed(POSE_SEED))
    source = renderer.render(sources, neutral_motion(args.pairs))
    driver_closed, driver_open = renderer.render(drivers, closed), renderer.render(drivers, opened)
    target_closed, target_open = renderer.render(sources, closed), renderer.render(sources, opened)
    with torch.no_grad():
        appearance = model.encode_appearance(source.rgb)
        source_motion = model.encode_motion(source.rgb)
        motion_closed, motion_open = model.encode_motion(driver_closed.rgb), model.encode_motion(driver_open.rgb)
        # Foregrounds on white, as the benchmark compares them (the teacher draws no background).
        output_closed, output_open = (
            on_white(output.rgb, output.alpha)
            for output in (
                model.render(appearance, source_motion=source_motion, driver_motion=motion) for motion in (motion_closed, motion_open)
            )
        )
    target_closed_rgb, target_open_rgb = (on_white(target.rgb, target.alpha) for target in (target_closed, target_open))
    mouth_index = REGION_NAMES.index("mouth")
    mouth = region_masks(target_open.landmarks, size=size)[:, mouth_index : mouth_index + 1].to(output_open)  # B×1×S×S

    def mouth_change(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(masked_l1(a, b, mouth))

    def mouth_psnr(guess: torch.Tensor) -> float:  # the benchmark's mouth PSNR against the open target, mean over pairs
        return float(region_psnr(guess, target_open_rgb, target_open.landmarks)[:, mouth_index].mean())

    with torch.no_grad():
        deltas_closed, deltas_open = (
            model.warp_to_driver(appearance.descriptor, motion.expression) for motion in (motion_closed, motion_open)
        )
    warp_change = float((deltas_open - deltas_closed).norm(dim=-1).mean())  # B×D×S×S×3 -> mean length
    z_change = (motion_open.expression - motion_closed.expression).norm(dim=1) / motion_closed.expression.norm(dim=1).clamp_min(1e-8)
    output_change, target_change = mouth_change(output_open, output_closed), mouth_change(target_open_rgb, target_closed_rgb)
    report = {
        "model": str(args.model),
        "pairs": args.pairs,
        "jaw_open": args.jaw,
        "identities": "the run's training pool" if args.trained_identities else "new (held out)",
        "z_change": float(z_change.mean()),
        "warp_change": warp_change,
        "warp_length": float(deltas_closed.norm(dim=-1).mean()),
        "voxel": 2 / model.config.volume_size,
        "output_mouth_change": output_change,
        "target_mouth_change": target_change,
        "jaw_response": output_change / max(target_change, 1e-8),
        "mouth_psnr_open_output_vs_open_target": mouth_psnr(output_open),
        "mouth_psnr_closed_output_vs_open_target": mouth_psnr(output_closed),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jaw-response.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [source.rgb, driver_closed.rgb, driver_open.rgb, output_closed, output_open, target_open_rgb]
    shown = min(args.pairs, 8)
    sheet = contact_sheet(torch.cat([row[:shown].clamp(0, 1) for row in rows]), columns=shown)
    from PIL import Image

    Image.fromarray((sheet.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(args.out / "jaw-response.png")
    print(
        f"{args.model}: {args.pairs} pairs, jawOpen 0 -> {args.jaw}: z changes {report['z_change']:.1%}, W_c→d's deltas by "
        f"{warp_change:.5f} (their length {report['warp_length']:.4f}, a voxel {report['voxel']:.4f}); mouth box changes "
        f"{output_change:.4f} (targets {target_change:.4f}): jaw response {report['jaw_response']:.2f}; open mouth PSNR "
        f"{report['mouth_psnr_open_output_vs_open_target']:.2f} dB (closed output against the open target: "
        f"{report['mouth_psnr_closed_output_vs_open_target']:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
