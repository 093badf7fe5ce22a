"""How long SyntheticHeads takes to render a data set on this machine (issue 3: 20,000 frames at
128×128 in under 10 minutes on the 2-core box). Renders the frames for real, in batches, with
random identities and motions, and prints the time; nothing passes or fails.

    .venv/bin/python bench/synthetic_render.py --frames 20000 --resolution 128
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models.data.heads import SyntheticHeads, sample_identities, sample_motions  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20_000, help="frames to render")
    parser.add_argument("--resolution", type=int, default=128, help="square resolution")
    parser.add_argument("--batch", type=int, default=64, help="frames per render call")
    args = parser.parse_args()
    heads = SyntheticHeads(resolution=args.resolution)
    generator = torch.Generator().manual_seed(0)
    began = time.perf_counter()
    with torch.inference_mode(), tqdm(total=args.frames, unit="frame", desc="rendering") as bar:
        for start in range(0, args.frames, args.batch):
            count = min(args.batch, args.frames - start)
            heads.render(sample_identities(count, generator=generator), sample_motions(count, generator=generator))
            bar.update(count)
    seconds = time.perf_counter() - began
    print(
        f"{args.frames} frames at {args.resolution}×{args.resolution} (batch {args.batch}, {torch.get_num_threads()} torch threads, "
        f"{len(os.sched_getaffinity(0))} cores): {seconds / 60:.2f} min, {args.frames / seconds:.1f} frames/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
