"""The lesson behind the face-aware figures: a face without eyes or mouth (the target with its eye and mouth boxes filled
by the skin around them) scores a full-frame PSNR well above the source copy's. Scored by the benchmark's own
FigureScorer on held-out clip motions, as `megalive-train eval` scores them, what each figure says of it (at 64 px):

    full-frame PSNR        the blank face 4.4 dB above the source copy (28.7 against 24.2 dB): it "wins"
    perceptual distance    it "wins" too (0.232 against 0.253): the eyes and mouth are a small part of the picture
    eye PSNR               2.3 dB below the source copy (19.3 against 21.6 dB)
    mouth PSNR             level with it (22.8 against 22.2 dB): a closed mouth is a few pixels, and the source copy,
                           frontal and neutral, is off by the pose as much as the blank face is off by the lips
    eye perceptual         clearly worse (1.02 against 0.61): a box without its eyes is far from one with them
    mouth perceptual       clearly worse (0.77 against 0.60)
    CSIM-dlib              clearly below (0.87 against 0.97): a face network sees the missing features

So the region PSNRs take the blank face's lead away (each region sits far further below its own full-frame PSNR than
the source copy's does) but, measured against a misaligned baseline, they do not rank it clearly below; the region
perceptual distances and CSIM-dlib do. (At 128 px: eye perceptual 1.11 against 0.74, mouth 0.84 against 0.68.)"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from models.data.heads import SyntheticHeads, neutral_motion, sample_identities
from models.evaluation import HELD_OUT_SEED, AvatarOutput, EvalConfig, FigureScorer, held_out_motions, load_metric_networks
from models.face_regions import region_boxes

RESOLUTION = 64
RING = 2  # pixels around a box whose median colour fills it

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blank_face(rgb: Tensor, landmarks: Tensor) -> Tensor:
    """B×3×S×S images with each eye and mouth box (from the B×68×2 landmarks) filled by the median colour of the
    RING pixels around it: the face's skin, without eyes or mouth."""
    blank = rgb.clone()
    size = rgb.shape[-1]
    for image, boxes in zip(blank, region_boxes(landmarks, size=size).tolist()):
        for x0, y0, x1, y1 in boxes:
            top, left = max(y0 - RING, 0), max(x0 - RING, 0)
            outer = image[:, top : y1 + RING, left : x1 + RING]  # 3×h×w: the box and its ring
            ring = torch.ones(outer.shape[1:], dtype=torch.bool)
            ring[y0 - top : y1 - top, x0 - left : x1 - left] = False
            skin = outer[:, ring].median(dim=1).values  # 3
            image[:, y0:y1, x0:x1] = skin[:, None, None]
    return blank


def test_a_blank_face_scores_clearly_below_the_source_copy_on_the_region_figures() -> None:
    generator = torch.Generator().manual_seed(HELD_OUT_SEED + 2)
    motion = held_out_motions(EvalConfig(model="", clips=2, frames_per_clip=8))  # smooth held-out clips: the default benchmark
    identity = sample_identities(len(motion), generator=generator)
    heads = SyntheticHeads(resolution=RESOLUTION)
    with torch.inference_mode():
        truth, source = heads.render(identity, motion), heads.render(identity, neutral_motion(len(motion)))
        blank = blank_face(truth.rgb, truth.landmarks)
        scorer = FigureScorer(regressor=None, networks=load_metric_networks())
        scorer.add_batch(
            {"blank face": AvatarOutput(rgb=blank, alpha=truth.alpha), "source copy": AvatarOutput(rgb=source.rgb, alpha=source.alpha)},
            AvatarOutput(rgb=truth.rgb, alpha=truth.alpha),
            landmarks=truth.landmarks,
            source=AvatarOutput(rgb=source.rgb, alpha=source.alpha),
            source_landmarks=source.landmarks,
            motion=motion,
            identity_targets=None,
        )
    face, copy = scorer.figures("blank face", full_frame=True), scorer.figures("source copy", full_frame=True)
    assert face.psnr is not None and copy.psnr is not None and face.eye_psnr is not None and copy.eye_psnr is not None
    assert face.mouth_psnr is not None and copy.mouth_psnr is not None
    assert face.psnr > copy.psnr + 3  # full frame: the blank face "wins" clearly
    for region_face, region_copy in ((face.eye_psnr, copy.eye_psnr), (face.mouth_psnr, copy.mouth_psnr)):
        assert face.psnr - region_face > copy.psnr - region_copy + 3  # its lead is gone in each region ...
    assert face.eye_psnr < copy.eye_psnr and face.mouth_psnr < copy.mouth_psnr + 1  # ... below or level with the source copy
    # The region perceptual distances: clearly worse in each box.
    assert face.eye_perceptual is not None and copy.eye_perceptual is not None
    assert face.mouth_perceptual is not None and copy.mouth_perceptual is not None
    assert face.eye_perceptual > copy.eye_perceptual + 0.2 and face.mouth_perceptual > copy.mouth_perceptual + 0.1
    assert face.csim_dlib_target is not None and copy.csim_dlib_target is not None
    assert face.csim_dlib_target < copy.csim_dlib_target - 0.05  # the face network: clearly worse
