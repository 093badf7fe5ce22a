"""The benchmark's face-aware figures (models/evaluation.py) on cases whose answers are known: region PSNR, perceptual
distance (EfficientNet-Lite0), CSIM-dlib and FD-EffNet."""

from __future__ import annotations

import pytest
import torch

from models.data.heads import HeadRender, SyntheticHeads, neutral_motion, sample_identities, sample_motions
from models.evaluation import (
    AvatarOutput,
    FigureScorer,
    MetricNetworks,
    frechet_distance,
    load_metric_networks,
    region_psnr,
)
from models.face_regions import REGION_NAMES, region_boxes, region_crops
from models.nets.perceptual import output_distance
from models.nets.weights import FACE_NETWORK, PERCEPTUAL_NETWORK

RESOLUTION = 64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def networks() -> MetricNetworks:
    loaded = load_metric_networks()
    assert loaded.status == {PERCEPTUAL_NETWORK: "active", FACE_NETWORK: "active"}
    return loaded


def _renders(count: int, *, neutral: bool) -> tuple[HeadRender, HeadRender]:
    """(targets, sources) of ``count`` identities: in random motions (or the neutral one), and neutral."""
    generator = torch.Generator().manual_seed(11)
    identity = sample_identities(count, generator=generator)
    heads = SyntheticHeads(resolution=RESOLUTION)
    motion = neutral_motion(count) if neutral else sample_motions(count, generator=generator)
    return heads.render(identity, motion), heads.render(identity, neutral_motion(count))


def _output(render: HeadRender) -> AvatarOutput:
    return AvatarOutput(rgb=render.rgb, alpha=render.alpha)


def _scored(networks: MetricNetworks, guesses: dict[str, AvatarOutput], truth: HeadRender, source: HeadRender) -> FigureScorer:
    """A scorer that has seen one batch: ``guesses`` against ``truth``, with ``source`` as the avatars' source images."""
    scorer = FigureScorer(regressor=None, networks=networks)
    with torch.inference_mode():
        scorer.add_batch(
            guesses,
            _output(truth),
            landmarks=truth.landmarks,
            source=_output(source),
            source_landmarks=source.landmarks,
            motion=truth.motion,
            identity_targets=None,
        )
    return scorer


def test_region_psnr_is_100_for_identical_pixels_and_sees_only_its_own_box() -> None:
    truth, _ = _renders(3, neutral=False)
    assert REGION_NAMES == ("eyes", "mouth")
    assert torch.equal(region_psnr(truth.rgb, truth.rgb, truth.landmarks), torch.full((3, 2), 100.0))
    eyes_only = truth.rgb.clone()
    for image, (x0, y0, x1, y1) in zip(eyes_only, region_boxes(truth.landmarks, size=RESOLUTION)[:, 0].tolist()):
        image[:, y0:y1, x0:x1] = 1 - image[:, y0:y1, x0:x1]  # the eye box inverted, nothing else
    figures = region_psnr(eyes_only, truth.rgb, truth.landmarks)
    assert (figures[:, 0] < 15).all() and (figures[:, 1] == 100).all()


def test_region_crops_cut_each_box_out_and_resize_it() -> None:
    truth, _ = _renders(2, neutral=False)
    painted = truth.rgb.clone()
    boxes = region_boxes(truth.landmarks, size=RESOLUTION)  # B×R×4
    for image, (x0, y0, x1, y1) in zip(painted, boxes[:, 1].tolist()):
        image[:, y0:y1, x0:x1] = torch.tensor([0.2, 0.4, 0.6])[:, None, None]  # the mouth box, one colour
    crops = region_crops(painted, truth.landmarks, size=24)  # B×R×3×24×24
    assert crops.shape == (2, len(REGION_NAMES), 3, 24, 24)
    torch.testing.assert_close(crops[:, 1], torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(2, 3, 24, 24))
    x0, y0, x1, y1 = boxes[0, 0].tolist()  # the eye box: the picture's own pixels, resized
    eyes = torch.nn.functional.interpolate(truth.rgb[:1, :, y0:y1, x0:x1], size=(24, 24), mode="bilinear", antialias=True)
    torch.testing.assert_close(crops[:1, 0], eyes)


def test_pyramid_distance_is_the_networks_perceptual_distance(networks: MetricNetworks) -> None:
    truth, source = _renders(3, neutral=False)
    perceptual = networks.perceptual
    assert perceptual is not None
    with torch.inference_mode():
        ours = output_distance(perceptual(source.rgb), perceptual(truth.rgb))
        assert torch.allclose(ours, perceptual.perceptual_distance(source.rgb, truth.rgb), atol=1e-6)
        assert (ours > 0.05).all() and output_distance(perceptual(truth.rgb), perceptual(truth.rgb)).abs().max() == 0


def test_identical_images_score_perfectly_on_every_figure(networks: MetricNetworks) -> None:
    # Neutral targets: the target is the source image, so the copy is the same face as both.
    truth, source = _renders(4, neutral=True)
    scorer = _scored(networks, {"copy": _output(truth)}, truth, source)
    figures = scorer.figures("copy", full_frame=True)
    assert figures.psnr == figures.foreground_psnr == figures.eye_psnr == figures.mouth_psnr == 100
    assert figures.ssim == pytest.approx(1.0) and figures.perceptual_distance == figures.eye_perceptual == figures.mouth_perceptual == 0
    assert figures.csim_dlib_target == pytest.approx(1.0, abs=1e-5) and figures.csim_dlib_source == pytest.approx(1.0, abs=1e-5)
    assert figures.fd_effnet == pytest.approx(0.0, abs=1e-6)
    assert figures.rotation_error_deg is None and figures.expression_error is None  # no regressor
    assert "fewer samples than dimensions" in scorer.notes()[0]
    first, first_source = _renders(1, neutral=True)  # one pair: no covariance, so no FD-EffNet (and a note)
    single = _scored(networks, {"copy": _output(first)}, first, first_source)
    assert single.figures("copy", full_frame=True).fd_effnet is None and "needs at least 2 pairs" in single.notes()[0]


def test_another_face_scores_lower_csim_and_higher_perceptual_distance(networks: MetricNetworks) -> None:
    truth, source = _renders(4, neutral=True)
    others = truth.rgb.roll(1, dims=0)  # each target's neighbour: another identity in the same (neutral) pose
    guesses = {"copy": _output(truth), "other": AvatarOutput(rgb=others, alpha=truth.alpha.roll(1, dims=0))}
    scorer = _scored(networks, guesses, truth, source)
    copy, other = scorer.figures("copy", full_frame=True), scorer.figures("other", full_frame=True)
    assert other.csim_dlib_target is not None and copy.csim_dlib_target is not None
    assert other.csim_dlib_target < copy.csim_dlib_target - 0.02 and other.csim_dlib_source < 0.999
    assert other.perceptual_distance is not None and other.perceptual_distance > 0.1
    # FD-EffNet compares sets, not pairs: the targets in another order are the same set (hence the per-pair figures beside it).
    assert other.fd_effnet == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 16, generator=generator)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)
    # A shift of the mean moves only |μ₁ - μ₂|²: 16 dimensions × 0.5².
    assert frechet_distance(features, features + 0.5) == pytest.approx(4.0, rel=1e-6)
    shifts = [frechet_distance(features, features + shift) for shift in (0.1, 0.3, 1.0)]
    assert shifts == sorted(shifts) and shifts[0] > 0
    assert frechet_distance(features, features * 2) > 1.0  # a wider spread: the covariance terms
    few = torch.randn(20, 64, generator=generator)  # fewer samples than dimensions
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(few, few + 0.25) == pytest.approx(64 * 0.25**2, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(few[:1], few)


def _reference_frechet(first: torch.Tensor, second: torch.Tensor) -> float:
    """The textbook formula with the matrix square root from an eigendecomposition: tr (Σ₁Σ₂)^½ = tr (Σ₁^½ Σ₂ Σ₁^½)^½."""
    first, second = first.double(), second.double()
    first_cov, second_cov = torch.cov(first.T), torch.cov(second.T)
    values, vectors = torch.linalg.eigh(first_cov)
    root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root @ second_cov @ root).clamp_min(0).sqrt().sum()
    return float((first.mean(0) - second.mean(0)).square().sum() + first_cov.trace() + second_cov.trace() - 2 * cross)


@pytest.mark.parametrize(("first_count", "second_count", "dimensions"), [(300, 200, 12), (30, 40, 64)])
def test_frechet_distance_matches_the_matrix_square_root_formula(first_count: int, second_count: int, dimensions: int) -> None:
    generator = torch.Generator().manual_seed(dimensions)
    mixing = torch.randn(dimensions, dimensions, generator=generator)
    first = torch.randn(first_count, dimensions, generator=generator) @ mixing
    second = torch.randn(second_count, dimensions, generator=generator) * 1.5 + 0.3
    ours = frechet_distance(first, second)
    assert ours == pytest.approx(_reference_frechet(first, second), rel=1e-6)
    if first_count > dimensions and second_count > dimensions:  # full rank: scipy's sqrtm agrees too, where installed
        linalg = pytest.importorskip("scipy.linalg")
        first_cov, second_cov = torch.cov(first.double().T).numpy(), torch.cov(second.double().T).numpy()
        root = linalg.sqrtm(first_cov @ second_cov).real
        mean = float((first.double().mean(0) - second.double().mean(0)).square().sum())
        assert ours == pytest.approx(mean + first_cov.trace() + second_cov.trace() - 2 * root.trace(), rel=1e-6)
