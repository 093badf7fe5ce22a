"""A personal few-shot model at work, without a camera (`megalive-train fewshot-preview`): the exported model (the
artefact the server serves, through the same drawing of landmarks) driven by held-out SyntheticHeads performances.

Per frame one row of the contact sheet:
    driver        the performer: a held-out identity in a held-out talking-head clip
    drawn         the landmark image the model reads: the driver's 68 points retargeted onto the person's neutral
                  landmarks (the card's), as a `retarget` session does
    landmarks     the model's output for those points
    arkit         its output for the same motion sent as ARKit curves (the puppet's landmarks, retargeted by the graph)
There is no ground truth for a real person: the sheet is for looking at (the benchmark, `megalive-train eval`, scores
synthetic people against the renderer).
"""

from __future__ import annotations

from pathlib import Path

import torch

from contract.landmark_image import draw_landmark_images, retarget_landmarks
from contract.model_card import read_model_card
from models.data.heads import HeadMotion, SyntheticHeads, contact_sheet, neutral_motion, sample_clip, sample_identities
from models.data.paired import save_png
from models.evaluation import HELD_OUT_SEED, OnnxAvatarModel


def preview_sheet(model_path: Path, out_path: Path, *, clips: int = 3, frames: int = 4, seed: int = HELD_OUT_SEED) -> int:
    """Writes the sheet; returns the number of rows. ValueError (one line) for a model that is not landmark-driven."""
    card = read_model_card(model_path)
    if card.landmark_input is None:
        raise ValueError(f"{model_path} is not a landmark-driven (few-shot) model")
    size = card.resolution[0]
    by_landmarks = OnnxAvatarModel(model_path, driver="landmarks")
    by_curves = OnnxAvatarModel(model_path, driver="arkit") if card.adapter("arkit") is not None else None
    heads = SyntheticHeads(resolution=size)
    generator = torch.Generator().manual_seed(seed)
    drivers = sample_identities(clips, generator=generator)
    motions = HeadMotion.cat([sample_clip(frames * 6, generator=generator)[::6] for _ in range(clips)]).centred()
    who = drivers[torch.arange(clips).repeat_interleave(frames)]
    render = heads.render(who, motions)
    driver_neutral = heads.landmarks(who, neutral_motion(len(motions))) / size
    person_neutral = torch.tensor(card.landmark_input.neutral_landmarks[0], dtype=torch.float32)
    points = retarget_landmarks(render.landmarks / size, driver_neutral, person_neutral).float()  # B×68×2 in [0, 1]
    avatar = torch.zeros(len(points), dtype=torch.long)
    with torch.inference_mode():
        from_points = by_landmarks(points, avatar).rgb
        drawn = draw_landmark_images(points.numpy(), size=size, thickness=card.landmark_input.line_thickness)
        tiles = [render.rgb, torch.from_numpy(drawn), from_points]
        if by_curves is not None:
            tiles.append(by_curves(motions.arkit_curves().float(), avatar).rgb)
    sheet = torch.stack(tiles, dim=1).flatten(0, 1).clamp(0, 1)  # B×columns×3×H×W -> B·columns×3×H×W
    save_png(contact_sheet(sheet, columns=len(tiles)), out_path)
    return len(points)
