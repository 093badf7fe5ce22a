"""SyntheticHeads: determinism, shapes, expression semantics, cross-reenactment, clips."""

import dataclasses

import pytest
import torch

from contract.arkit import ARKIT_BLENDSHAPES, ARKIT_INDEX
from models.data.heads import (
    MODELLED_BLENDSHAPES,
    HeadMotion,
    Identity,
    SyntheticHeads,
    contact_sheet,
    draw_landmarks,
    neutral_motion,
    sample_clip,
    sample_identities,
    sample_motions,
)

RES = 64


@pytest.fixture(scope="module")
def heads() -> SyntheticHeads:
    return SyntheticHeads(resolution=RES)


@pytest.fixture(scope="module")
def identities() -> Identity:
    return sample_identities(4, generator=torch.Generator().manual_seed(7))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fields_equal(a, b) -> bool:
    return all(torch.equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))


def _luminance(rgb: torch.Tensor) -> torch.Tensor:  # B×3×H×W -> B×H×W
    return 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]


def _boxes(image: torch.Tensor, points: torch.Tensor, margin: float, shift_y: float = 0.0):
    """Per-sample crops of image (B×C×H×W or B×H×W) over each landmark box (points B×K×2),
    grown by margin px and moved down by shift_y px."""
    crops = []
    for b in range(image.shape[0]):
        x0, y0 = (points[b].min(dim=0).values - margin + torch.tensor([0, shift_y])).floor().long()
        x1, y1 = (points[b].max(dim=0).values + margin + torch.tensor([0, shift_y])).ceil().long()
        crops.append(image[b, ..., max(y0, 0) : min(y1, RES), max(x0, 0) : min(x1, RES)])
    return crops


def _fraction_near(box: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Fraction of a 3×h×w crop's pixels within 0.08 (mean abs RGB) of colour (3)."""
    return ((box - colour.view(3, 1, 1)).abs().mean(0) < 0.08).float().mean()


def test_arkit_names_are_the_52_live_link_face_controls():
    assert len(ARKIT_BLENDSHAPES) == 52 == len(set(ARKIT_BLENDSHAPES))
    assert ARKIT_BLENDSHAPES[0] == "eyeBlinkLeft" and ARKIT_BLENDSHAPES[17] == "jawOpen"
    assert ARKIT_BLENDSHAPES[-1] == "tongueOut" and ARKIT_INDEX["cheekPuff"] == 46
    for name in ("jawOpen", "mouthSmileLeft", "eyeBlinkRight", "browInnerUp", "eyeLookUpLeft"):
        assert name in MODELLED_BLENDSHAPES


def test_sampling_and_rendering_are_deterministic_by_seed(heads):
    a, b, c = (sample_identities(3, generator=_gen(s)) for s in (1, 1, 2))
    assert _fields_equal(a, b) and not _fields_equal(a, c)
    ma, mb, mc = (sample_motions(3, generator=_gen(s)) for s in (1, 1, 2))
    assert _fields_equal(ma, mb) and not _fields_equal(ma, mc)
    first, second = heads.render(a, ma), heads.render(b, mb)
    assert torch.equal(first.rgb, second.rgb) and torch.equal(first.landmarks, second.landmarks)
    assert not torch.equal(first.rgb, heads.render(c, mc).rgb)


def test_output_shapes_and_ranges(heads, identities):
    motion = sample_motions(4, generator=_gen(3))
    out = heads.render(identities, motion)
    assert out.rgb.shape == (4, 3, RES, RES) and out.alpha.shape == (4, 1, RES, RES)
    assert out.landmarks.shape == (4, 68, 2)
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1
    assert out.alpha.min() >= 0 and out.alpha.max() <= 1
    assert torch.isfinite(out.rgb).all() and torch.isfinite(out.landmarks).all()
    # The head is a sizeable foreground and the corners are background.
    coverage = out.alpha.mean(dim=(1, 2, 3))
    assert (coverage > 0.25).all() and (coverage < 0.9).all()
    assert (out.alpha[:, 0, 0, 0] < 0.05).all()


def test_batch_is_per_sample_and_indexing_works(heads, identities):
    motion = sample_motions(4, generator=_gen(4))
    full = heads.render(identities, motion)
    index = torch.tensor([2, 0])
    part = heads.render(identities[index], motion[index])
    assert torch.allclose(part.rgb, full.rgb[index], atol=1e-5)
    assert len(identities[index]) == 2 and len(HeadMotion.cat([motion, motion])) == 8
    assert identities.to("cpu").head_width.device.type == "cpu"


def test_one_identity_broadcasts_over_a_batch_of_motions(heads, identities):
    motion = sample_motions(3, generator=_gen(5))
    one = identities[[1]]
    broadcast = heads.render(one, motion)
    copies = heads.render(one[[0, 0, 0]], motion)
    torch.testing.assert_close(broadcast.rgb, copies.rgb)
    torch.testing.assert_close(broadcast.alpha, copies.alpha)
    torch.testing.assert_close(broadcast.landmarks, copies.landmarks)
    with pytest.raises(ValueError, match="identity batch 2 != motion batch 3"):
        heads.render(identities[[0, 1]], motion)


def test_unmodelled_controls_have_no_effect(heads, identities):
    neutral = neutral_motion(4)
    unmodelled = [n for n in ARKIT_BLENDSHAPES if n not in MODELLED_BLENDSHAPES]
    poked = neutral.with_controls({name: 1.0 for name in unmodelled})
    assert torch.equal(heads.render(identities, neutral).rgb, heads.render(identities, poked).rgb)
    with pytest.raises(KeyError):
        neutral.with_controls({"jawOpne": 1.0})


def test_blink_closes_the_eyes(heads, identities):
    open_ = heads.render(identities, neutral_motion(4))
    closed = heads.render(identities, neutral_motion(4).with_controls({"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}))
    for eye in (slice(36, 42), slice(42, 48)):
        points = open_.landmarks[:, eye]
        height = (points[..., 1].max(1).values - points[..., 1].min(1).values).max().item()
        for b in range(4):
            box_open = _boxes(open_.rgb, points, 0.5)[b]
            box_closed = _boxes(closed.rgb, points, 0.5)[b]
            # White sclera and dark iris give contrast; a closed lid is flat skin with a lash line.
            contrast_open = _luminance(box_open[None]).std()
            contrast_closed = _luminance(box_closed[None]).std()
            assert contrast_closed < 0.9 * contrast_open, (b, contrast_open, contrast_closed)
            # ...that is skin coloured: the closed box's median colour has the hue of the skin below
            # the eye, and far more of its pixels are that colour than in the open eye.
            skin_below = _boxes(open_.rgb, points, 0.0, shift_y=height + 2.5)[b].mean(dim=(1, 2))
            lid = box_closed.flatten(1).median(dim=1).values
            chroma = lambda rgb: rgb / rgb.sum()  # noqa: E731 - hue without the lid's shading
            assert (chroma(lid) - chroma(skin_below)).abs().max() < 0.03, (b, lid, skin_below)
            assert _fraction_near(box_closed, lid) > _fraction_near(box_open, lid) + 0.15, (
                b,
                _fraction_near(box_open, lid),
                _fraction_near(box_closed, lid),
            )
    # Eyelid landmarks close: upper (37, 38) meet lower (41, 40).
    gap_open = (open_.landmarks[:, [41, 40], 1] - open_.landmarks[:, [37, 38], 1]).mean()
    gap_closed = (closed.landmarks[:, [41, 40], 1] - closed.landmarks[:, [37, 38], 1]).abs().mean()
    assert gap_open > 1.0 and gap_closed < 0.1


def test_jaw_open_darkens_the_mouth_and_opens_the_lips(heads, identities):
    closed = heads.render(identities, neutral_motion(4))
    opened = heads.render(identities, neutral_motion(4).with_controls({"jawOpen": 1.0}))
    inner = opened.landmarks[:, 60:68]
    for b in range(4):
        # The darker quarter of the inner-lip box: lips/skin when closed, mouth interior when open.
        dark_closed = _luminance(_boxes(closed.rgb, inner, 0.0)[b][None]).quantile(0.25)
        dark_open = _luminance(_boxes(opened.rgb, inner, 0.0)[b][None]).quantile(0.25)
        assert dark_open < 0.8 * dark_closed, (b, dark_closed, dark_open)
    lip_gap = lambda out: out.landmarks[:, 66, 1] - out.landmarks[:, 62, 1]  # noqa: E731
    assert (lip_gap(closed).abs() < 0.5).all() and (lip_gap(opened) > 4).all()
    assert (opened.landmarks[:, 8, 1] > closed.landmarks[:, 8, 1] + 1).all()  # chin drops


def test_cross_reenactment_is_identity_a_with_motion_b(heads, identities):
    id_a, id_b = identities[torch.tensor([0, 1])], identities[torch.tensor([2, 3])]
    motion_b = sample_motions(2, generator=_gen(11))
    cross, self_b = heads.render(id_a, motion_b), heads.render(id_b, motion_b)
    assert _fields_equal(cross.identity, id_a) and _fields_equal(cross.motion, motion_b)
    assert (cross.rgb - self_b.rgb).abs().mean() > 0.05
    # Same pose and expression: landmarks agree up to face proportions...
    assert (cross.landmarks - self_b.landmarks).norm(dim=2).mean() < 0.08 * RES
    # ...and a change of the driver's pose moves both the same way.
    turned = motion_b.with_pose(yaw=0.4)
    shift_cross = heads.render(id_a, turned).landmarks[..., 0].mean(1) - cross.landmarks[..., 0].mean(1)
    shift_self = heads.render(id_b, turned).landmarks[..., 0].mean(1) - self_b.landmarks[..., 0].mean(1)
    assert (torch.sign(shift_cross) == torch.sign(shift_self)).all()


def test_landmarks_follow_yaw_and_stay_in_the_image(heads, identities):
    left = heads.landmarks(identities, neutral_motion(4).with_pose(yaw=-0.4))
    right = heads.landmarks(identities, neutral_motion(4).with_pose(yaw=0.4))
    assert (right[..., 0].mean(1) > left[..., 0].mean(1) + 2).all()  # +yaw: nose to image right
    up = heads.landmarks(identities, neutral_motion(4).with_pose(pitch=0.3))
    assert (up[:, 30, 1] < heads.landmarks(identities, neutral_motion(4))[:, 30, 1]).all()
    many = sample_identities(32, generator=_gen(5))
    points = heads.landmarks(many, sample_motions(32, generator=_gen(6)))
    assert points.min() >= 0 and points.max() <= RES
    # iBUG order sanity at neutral: jaw 0 left of 16, right eye (36-41) left of left eye.
    neutral = heads.landmarks(identities, neutral_motion(4))
    assert (neutral[:, 0, 0] < neutral[:, 16, 0]).all()
    assert (neutral[:, 36:42, 0].mean(1) < neutral[:, 42:48, 0].mean(1)).all()
    assert (neutral[:, 19, 1] < neutral[:, 37, 1]).all() and (neutral[:, 30, 1] < neutral[:, 51, 1]).all()


def test_clip_is_smooth_and_blinks():
    clip = sample_clip(250, generator=_gen(8), fps=25)
    assert len(clip) == 250 and clip.expression.shape == (250, 52)
    assert clip.expression.min() >= 0 and clip.expression.max() <= 1
    for pose in (clip.yaw, clip.pitch, clip.roll):
        assert pose.diff().abs().mean() < 0.015  # < 1° per frame on average
    blink = clip.expression[:, ARKIT_INDEX["eyeBlinkLeft"]]
    onsets = ((blink[1:] > 0.8) & (blink[:-1] <= 0.8)).sum()
    assert onsets >= 1
    assert clip.expression[:, ARKIT_INDEX["jawOpen"]].max() > 0.1  # it talks
    # Speech is fast (syllables at ~4 Hz) but still far smoother than frame-wise noise.
    jaw = clip.expression[:, ARKIT_INDEX["jawOpen"]]
    shuffled = jaw[torch.randperm(len(jaw), generator=_gen(0))]
    assert jaw.diff().abs().mean() < 0.5 * shuffled.diff().abs().mean()
    assert torch.equal(sample_clip(250, generator=_gen(8)).expression, clip.expression)


def test_contact_sheet_and_landmark_drawing(heads, identities):
    out = heads.render(identities, neutral_motion(4))
    sheet = contact_sheet(draw_landmarks(out.rgb, out.landmarks), columns=2, padding=2)
    assert sheet.shape == (3, 2 * (RES + 2) + 2, 2 * (RES + 2) + 2)
