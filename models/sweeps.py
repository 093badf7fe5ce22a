"""`megalive-train sweeps`: single-control sweeps of an exported model's ARKit driver, per avatar.

Each sweep moves one wire curve from 0 to its end value (1 for a blendshape; the edge of the training range in
radians for a head rotation) with every other curve at 0, through the model's ``arkit`` graph, the artefact the
server runs. One contact sheet per avatar: a row per control, the puppet's picture at the end value first, then the
avatar at evenly spaced values. And one figure per control and avatar: how much the avatar's output changes from the
control at 0 to its end value, as the mean absolute difference in 8-bit levels inside the region the control moves
(the eye boxes for the eye and brow controls, the mouth box for jaw and mouth, the whole frame for the head), beside
the same figure for the puppet's own picture; the boxes are the avatar's neutral landmarks'.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from contract.arkit import CURVE_INDEX
from contract.model_card import read_model_card
from models.blocks import resize_square
from models.data.heads import SyntheticHeads, contact_sheet, neutral_motion
from models.data.paired import load_identities, read_meta, save_image
from models.evaluation import OnnxAvatarModel
from models.face_regions import REGION_NAMES, region_masks
from models.megaportraits.puppet import Puppet, PuppetConfig


@dataclass(frozen=True)
class Sweep:
    curve: str  # a wire curve name (contract.arkit.ARKIT_CURVES)
    end: float  # the value the sweep ends at
    region: str  # "eyes" | "mouth" | "frame": where its change is measured


SWEEPS = (
    Sweep("jawOpen", 1.0, "mouth"),
    Sweep("eyeBlinkLeft", 1.0, "eyes"),
    Sweep("eyeBlinkRight", 1.0, "eyes"),
    Sweep("mouthSmileLeft", 1.0, "mouth"),
    Sweep("mouthSmileRight", 1.0, "mouth"),
    Sweep("browInnerUp", 1.0, "eyes"),
    Sweep("mouthPucker", 1.0, "mouth"),
    Sweep("eyeLookInLeft", 1.0, "eyes"),
    Sweep("eyeLookOutLeft", 1.0, "eyes"),
    # Head rotations end at the edge of the training motions (models/data/heads/params.py sample_motions).
    Sweep("headYaw", 0.45, "frame"),
    Sweep("headPitch", 0.3, "frame"),
    Sweep("headRoll", 0.25, "frame"),
)


@dataclass(frozen=True)
class SweepChange:
    curve: str
    region: str
    avatar: list[float]  # per avatar, mean |output(end) - output(0)| in 8-bit levels inside the region
    puppet: float  # the same for the puppet's picture (its own neutral landmarks' region)

    @property
    def smallest_avatar(self) -> float:
        return min(self.avatar)


@dataclass(frozen=True)
class SweepReport:
    model: str
    avatars: list[str]
    steps: int
    changes: list[SweepChange]

    def table(self) -> str:
        lines = [
            f"single-control sweeps of {self.model} through its arkit graph: mean |output(end) - output(0)| in 8-bit levels inside "
            "the region the control moves (the avatar's neutral eye / mouth boxes, or the whole frame for the head)",
            f"  {'control':<16} {'region':<6} {'puppet':>7} {'avatars min':>12} {'mean':>6} {'max':>6}",
        ]
        for change in self.changes:
            mean, largest = sum(change.avatar) / len(change.avatar), max(change.avatar)
            lines.append(
                f"  {change.curve:<16} {change.region:<6} {change.puppet:7.1f} {change.smallest_avatar:12.1f} {mean:6.1f} {largest:6.1f}"
            )
        return "\n".join(lines)


def _region_change(first: Tensor, last: Tensor, masks: Tensor | None) -> Tensor:
    """Mean |last - first| (8-bit levels) per image over a B×S×S mask (None: the whole frame): B."""
    difference = (last - first).abs().mean(dim=1) * 255  # B×3×S×S -> B×S×S
    if masks is None:
        return difference.flatten(1).mean(dim=1)
    return (difference * masks).flatten(1).sum(dim=1) / masks.flatten(1).sum(dim=1).clamp_min(1)


def run_sweeps(model_path: Path, data: Path, out_dir: Path, *, steps: int = 5, tile: int = 128) -> SweepReport:
    """Write OUT/sweeps-<avatar>.jpg per avatar (tiles of ``tile`` px; the figures are measured at full size) and
    OUT/sweeps.json; returns the report."""
    if steps < 2:
        raise ValueError("--steps must be at least 2 (the control at 0 and at its end)")
    if not 16 <= tile <= 1024:
        raise ValueError(f"--tile must be in [16, 1024], got {tile}")
    card = read_model_card(model_path)
    graph = card.adapter("arkit")
    if graph is None or graph.config.get("design") != "puppet":
        raise ValueError(f"{model_path} has no puppet-driven arkit graph (re-export it with `megalive-train export`)")
    model = OnnxAvatarModel(model_path, driver="arkit")
    meta = read_meta(data)
    avatars = load_identities(meta.root / "avatars.npz")
    model.set_sources(torch.zeros(len(avatars), 3, 1, 1))  # a student only checks that the avatar counts agree
    resolution = model.resolution
    heads = SyntheticHeads(resolution=resolution)
    with torch.inference_mode():
        neutral = heads.render(avatars, neutral_motion(len(avatars)))
        masks = region_masks(neutral.landmarks, size=resolution)  # A×R×S×S
        puppet = Puppet(config=PuppetConfig(**graph.config["puppet"]))
        puppet_landmarks = heads.render(puppet.identity, neutral_motion(1)).landmarks
        puppet_masks = region_masks(puppet_landmarks, size=resolution)  # 1×R×S×S
    values = torch.linspace(0, 1, steps)
    count = len(avatars)
    rows: dict[int, list[Tensor]] = {avatar: [] for avatar in range(count)}
    changes = []
    avatar_index = torch.arange(count)
    for sweep in SWEEPS:
        frames = []  # per value: A×3×S×S
        for value in values:
            curves = torch.zeros(count, len(CURVE_INDEX))
            curves[:, CURVE_INDEX[sweep.curve]] = float(value) * sweep.end
            frames.append(model(curves, avatar_index).rgb.clamp(0, 1))
        with torch.inference_mode():
            ends = torch.zeros(2, len(CURVE_INDEX))
            ends[1, CURVE_INDEX[sweep.curve]] = sweep.end
            drawn = puppet(ends)  # 2×3×S×S: at 0 and at the end
        if sweep.region == "frame":
            avatar_masks, own_masks = None, None
        else:
            region = REGION_NAMES.index(sweep.region)
            avatar_masks, own_masks = masks[:, region], puppet_masks[:, region]
        changes.append(
            SweepChange(
                curve=sweep.curve,
                region=sweep.region,
                avatar=[float(v) for v in _region_change(frames[0], frames[-1], avatar_masks)],
                puppet=float(_region_change(drawn[:1], drawn[1:], own_masks)[0]),
            )
        )
        for avatar in range(count):
            rows[avatar] += [drawn[1], *(frame[avatar] for frame in frames)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for avatar, tiles in rows.items():
        shrunk = resize_square(torch.stack(tiles), tile)  # T×3×S×S -> T×3×tile×tile (area-averaged)
        path = out_dir / f"sweeps-{meta.avatar_names[avatar].lower()}.jpg"
        save_image(contact_sheet(shrunk, columns=steps + 1), path, image_format="JPEG")
    report = SweepReport(model=str(model_path), avatars=list(meta.avatar_names), steps=steps, changes=changes)
    temporary = out_dir / ".sweeps.json.tmp"
    temporary.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    temporary.replace(out_dir / "sweeps.json")
    return report
