"""`megalive verify FILE…`: does each PNG, JPEG or MP4 carry MegaLive provenance? The texture watermark
(server/provenance.py; in an MP4, looked for in frames sampled through it) and the C2PA manifest
(server/manifest.py), one line per file, or JSON."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from server import manifest, provenance

PICTURES = (".png", ".jpg", ".jpeg")
VIDEOS = (".mp4",)
SAMPLED_FRAMES = 5  # frames of a video the watermark is looked for in, evenly through it


@dataclass(frozen=True)
class Verdict:
    path: Path
    watermark: int | None  # the avatar id the watermark carries
    manifest: manifest.ManifestReport | None
    problems: tuple[str, ...] = ()  # what could not be checked, and why

    @property
    def has_provenance(self) -> bool:
        return self.watermark is not None or (self.manifest is not None and self.manifest.valid)

    def line(self) -> str:
        parts = []
        if self.watermark is not None:
            parts.append(f"watermark found (MegaLive, synthetic, avatar {self.watermark})")
        report = self.manifest
        if report is not None and report.present:
            avatars = ", ".join(f"{a.get('name')} (id {a.get('id')}, consent {a.get('consent_sha256')})" for a in report.avatars)
            if report.valid:
                trust = "trusted" if report.trusted else "certificate untrusted (self-issued or unknown CA)"
                parts.append(f"C2PA manifest valid, {trust}: signer {report.signer}, {report.tool}, avatars: {avatars or '-'}")
            else:
                parts.append(f"C2PA manifest INVALID ({', '.join(report.failures) or 'unknown failure'}): signer {report.signer}")
        if not parts:
            parts.append("neither watermark nor manifest")
        parts += [f"not checked: {problem}" for problem in self.problems]
        return f"{self.path}: {'; '.join(parts)}"

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "provenance": self.has_provenance,
            "watermark": None if self.watermark is None else {"avatar": self.watermark},
            "manifest": None if self.manifest is None else self.manifest.as_dict(),
            "problems": list(self.problems),
        }


def video_frames(path: Path, count: int = SAMPLED_FRAMES) -> list[np.ndarray]:
    """Up to ``count`` frames (H×W×3 uint8) evenly through a video, decoded by the ffmpeg imageio-ffmpeg bundles."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    total = max(1, int(round(float(meta.get("duration") or 0) * float(meta.get("fps") or 25))))
    wanted = {int(i * total / count) for i in range(count)}
    frames = []
    try:
        for index, raw in enumerate(reader):
            if index in wanted:
                frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy())
            if len(frames) == count:
                break
    finally:
        reader.close()
    return frames


def verify_file(path: Path) -> Verdict:
    suffix = path.suffix.lower()
    problems: list[str] = []
    if not path.is_file():
        return Verdict(path, None, None, ("no such file",))
    if suffix not in PICTURES + VIDEOS:
        return Verdict(path, None, None, ("not a PNG, JPEG or MP4 file",))
    watermark = None
    why_not = provenance.unavailable()
    if why_not is not None:
        problems.append(f"watermark ({why_not})")
    else:
        try:
            if suffix in VIDEOS:
                pictures = video_frames(path)
            else:
                with Image.open(path) as image:
                    pictures = [np.asarray(image.convert("RGB"))]
            watermark = next((found for found in map(provenance.read_watermark, pictures) if found is not None), None)
        except Exception as error:  # a broken file: said, not raised
            problems.append(f"watermark (cannot decode: {type(error).__name__}: {error})")
    report = None
    why_not = manifest.unavailable()
    if why_not is not None:
        problems.append(f"C2PA ({why_not})")
    else:
        report = manifest.read_manifest(path)
    return Verdict(path, watermark, report, tuple(problems))
