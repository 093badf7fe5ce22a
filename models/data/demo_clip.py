"""The demo's driver clip: SyntheticHeads identities that are not avatars, performing smooth clips.

Written as an H.264 MP4 with the ffmpeg that imageio-ffmpeg bundles, so the runtime plays it
without torch. Identities come from their own seeded stream (never the avatars' or the training
drivers' streams, see models/data/paired.py).
"""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from models.data.heads import HeadMotion, Identity, SyntheticHeads, sample_clip, sample_identities


def render_driver_clip(
    out: Path, *, resolution: int = 256, seconds_per_identity: float = 4.0, identities: int = 2, fps: float = 25.0, seed: int = 7
) -> int:
    """Render `identities` back-to-back performances to out (temporary name, then rename); returns frames."""
    heads = SyntheticHeads(resolution=resolution)
    generator = torch.Generator().manual_seed(seed * 1000 + 7)
    people = sample_identities(identities, generator=generator)
    frames_each = round(seconds_per_identity * fps)
    frames: list[np.ndarray] = []
    with torch.inference_mode():
        for index in range(identities):
            motion: HeadMotion = sample_clip(frames_each, generator=generator, fps=fps)
            for start in range(0, frames_each, 16):
                part = motion[start : start + 16]
                render = heads.render(Identity.cat([people[index]] * len(part)), part)
                rgb = render.rgb.clamp(0, 1).mul(255).add(0.5).to(torch.uint8).permute(0, 2, 3, 1)  # B×3×H×W -> B×H×W×3
                frames.extend(rgb.numpy())
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.stem}.tmp{out.suffix}")
    writer = imageio_ffmpeg.write_frames(
        str(temporary), (resolution, resolution), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=8, ffmpeg_log_level="error"
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    temporary.replace(out)
    return len(frames)
