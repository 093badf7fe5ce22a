"""Losses: PatchGAN hinge and feature
matching, the cycle/contrastive loss on motion descriptors, masked variants, loss weights."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import (
    DiscriminatorConfig,
    LossConfig,
    LossWeights,
    MultiScaleDiscriminator,
    cycle_contrastive_loss,
    feature_matching_loss,
    foreground,
    hinge_discriminator_loss,
    hinge_generator_loss,
    masked_l1,
    other_drivers,
)

TINY_DISCRIMINATOR = DiscriminatorConfig(scales=3, channels=(8, 16, 32))


def _images(batch: int, *, seed: int, size: int = 64) -> torch.Tensor:
    coarse = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


# -- PatchGAN ---------------------------------------------------------------------------------------


def test_multiscale_patchgan_output_shapes_per_scale() -> None:
    torch.manual_seed(0)
    discriminator = MultiScaleDiscriminator(config=TINY_DISCRIMINATOR)
    out = discriminator(_images(2, seed=1))
    assert len(out.logits) == len(out.features) == 3
    for scale, (logits, features) in enumerate(zip(out.logits, out.features)):
        size = 64 // 2**scale  # the input pooled ×1/2 per scale
        assert logits.shape == (2, 1, size // 4 - 2, size // 4 - 2)  # two stride-2 convs, then two 4×4 stride-1 convs
        assert [f.shape[1] for f in features] == [8, 16, 32]
        assert features[0].shape[-1] == size // 2


def test_hinge_losses_have_the_right_sign_behaviour() -> None:
    confident_real, confident_fake = [torch.full((2, 1, 4, 4), 2.0)], [torch.full((2, 1, 4, 4), -2.0)]
    assert float(hinge_discriminator_loss(confident_real, confident_fake)) == 0.0  # beyond the margins: nothing to learn
    assert float(hinge_discriminator_loss([torch.full((1, 1, 2, 2), -1.0)], [torch.full((1, 1, 2, 2), 1.0)])) == 4.0

    fake = torch.zeros(2, 1, 4, 4, requires_grad=True)
    hinge_discriminator_loss([torch.zeros(2, 1, 4, 4)], [fake]).backward()
    assert fake.grad is not None and (fake.grad > 0).all()  # D lowers its score of fakes
    fake.grad = None
    hinge_generator_loss([fake]).backward()
    assert (fake.grad < 0).all()  # G raises D's score of its fakes
    assert hinge_generator_loss([torch.full((1, 1, 2, 2), 3.0)]) < hinge_generator_loss([torch.full((1, 1, 2, 2), -3.0)])
    # Several scales: the mean over scales.
    two_scales = hinge_discriminator_loss([torch.ones(1, 1, 2, 2), torch.full((1, 1, 1, 1), -1.0)], [torch.full((1, 1, 2, 2), -1.0)] * 2)
    assert float(two_scales) == 1.0


def test_feature_matching_is_zero_for_identical_inputs_and_only_trains_the_fake_side() -> None:
    torch.manual_seed(0)
    discriminator = MultiScaleDiscriminator(config=TINY_DISCRIMINATOR).eval()
    real = _images(2, seed=1)
    fake = real.clone().requires_grad_(True)
    assert float(feature_matching_loss(discriminator(real).features, discriminator(fake).features).detach()) == 0.0
    other = _images(2, seed=2).requires_grad_(True)
    real_input = real.clone().requires_grad_(True)
    loss = feature_matching_loss(discriminator(real_input).features, discriminator(other).features)
    assert loss > 0
    loss.backward()
    assert other.grad is not None and other.grad.abs().sum() > 0
    assert real_input.grad is None  # real features are targets, detached


# -- cycle / contrastive ----------------------------------------------------------------------------


def _naive_contrastive(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """-log(e^{s(cos⁺ - m)} / (e^{s(cos⁺ - m)} + Σ e^{s cos⁻})), in float64, for comparison."""
    anchor, positive, negatives = anchor.double(), positive.double(), negatives.double()
    cos_pos = F.cosine_similarity(anchor, positive, dim=-1)
    cos_neg = F.cosine_similarity(anchor.unsqueeze(1), negatives, dim=-1)
    top = torch.exp(s * (cos_pos - m))
    return (-torch.log(top / (top + torch.exp(s * cos_neg).sum(dim=1)))).mean()


def test_contrastive_loss_matches_its_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    anchor, positive = torch.randn(4, 16, generator=generator), torch.randn(4, 16, generator=generator)
    negatives = torch.randn(4, 3, 16, generator=generator)
    loss = cycle_contrastive_loss(anchor, positive, negatives, scale=5.0, margin=0.2)
    torch.testing.assert_close(loss.double(), _naive_contrastive(anchor, positive, negatives, 5.0, 0.2), atol=1e-5, rtol=1e-5)
    assert cycle_contrastive_loss(anchor, positive, negatives, margin=0.0) < loss  # the margin makes positives work harder


def test_contrastive_loss_is_finite_for_identical_opposite_and_degenerate_descriptors() -> None:
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    s, m = 5.0, 0.2
    # Identical everything: cos⁺ = cos⁻ = 1, L = log(1 + e^{s·m}).
    identical = cycle_contrastive_loss(z, z, z.unsqueeze(1))
    assert math.isclose(float(identical), math.log(1 + math.exp(s * m)), rel_tol=1e-5)
    # Opposite positive, identical negative: the worst case, L = log(1 + e^{s(2 + m)}), still finite.
    opposite = cycle_contrastive_loss(z, -z, z.unsqueeze(1))
    assert math.isclose(float(opposite), math.log(1 + math.exp(s * (2 + m))), rel_tol=1e-5)
    # Huge and zero-length descriptors, with gradients.
    for anchor in (z * 1e30, torch.zeros(3, 8)):
        anchor = anchor.clone().requires_grad_(True)
        loss = cycle_contrastive_loss(anchor, torch.zeros(3, 8), -anchor.detach().unsqueeze(1))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(anchor.grad).all()
    # Batch 1: no other driver in the batch, so no negatives: L = 0 (and finite gradients).
    single = z[:1].clone().requires_grad_(True)
    negatives = other_drivers(single)
    assert negatives.shape == (1, 0, 8)
    loss = cycle_contrastive_loss(single, z[:1] * 2, negatives)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(single.grad).all()


def test_other_drivers_lists_every_other_sample() -> None:
    descriptors = torch.arange(4.0).unsqueeze(1)  # 4×1: sample i holds i
    assert other_drivers(descriptors).squeeze(-1).tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]


# -- masks and weights ------------------------------------------------------------------------------


def test_masked_l1_and_foreground() -> None:
    prediction, target = _images(2, seed=1), _images(2, seed=2)
    torch.testing.assert_close(masked_l1(prediction, target, torch.ones(2, 1, 64, 64)), F.l1_loss(prediction, target))
    assert masked_l1(prediction, target) == F.l1_loss(prediction, target)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., :32] = 1
    changed_background = target.clone()
    changed_background[..., 32:] = 0.5
    assert masked_l1(prediction, target, mask) == masked_l1(prediction, changed_background, mask)
    assert float(masked_l1(prediction, target, torch.zeros(2, 1, 64, 64))) == 0.0  # empty mask: 0, not NaN
    assert torch.equal(foreground(target, mask)[..., 32:], torch.zeros(2, 3, 64, 32))
    assert foreground(target, None) is target


def test_loss_weights_are_the_design_values_and_frozen() -> None:
    weights = LossWeights()
    assert dataclasses.asdict(weights) == {"adversarial": 1.0, "feature_matching": 40.0, "cycle": 2.0}
    config = LossConfig()
    assert (config.cycle_scale, config.cycle_margin) == (5.0, 0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        weights.cycle = 1.0  # type: ignore[misc]
