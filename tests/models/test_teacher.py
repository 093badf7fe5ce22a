"""The MegaPortraits base model (teacher): warps, shapes per preset, gradients, parameter counts."""

import re

import pytest
import torch
import torch.nn.functional as F

from models.megaportraits import base as base_module
from models.megaportraits.base import BASE_PRESETS, BaseConfig, BaseModel, BaseOutput, base_config, parameter_counts
from models.megaportraits.motion import HeadPose, identity_pose
from models.megaportraits.warping import (
    ALIGN_CORNERS,
    canonical_to_driver_grid,
    identity_grid,
    posed,
    source_to_canonical_grid,
    unposed,
    voxel_size,
    warp,
)

# An anisotropic volume (D, H, W all different) so that a mixed-up axis order cannot pass.
DEPTH, HEIGHT, WIDTH = 5, 6, 7


def _volume(batch: int = 2, channels: int = 3, *, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, DEPTH, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def _grid() -> torch.Tensor:
    return identity_grid(depth=DEPTH, height=HEIGHT, width=WIDTH)


def _pose(
    batch: int, *, rotation: tuple[float, float, float] = (0.0, 0.0, 0.0), translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> HeadPose:
    return HeadPose(rotation=torch.tensor([rotation] * batch), translation=torch.tensor([translation] * batch), scale=torch.ones(batch, 1))


def _images(batch: int, resolution: int, *, seed: int) -> torch.Tensor:
    """Smooth random pictures (8×8 noise upsampled)."""
    coarse = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)


# -- warps ------------------------------------------------------------------------------------------


def test_identity_grid_maps_a_volume_to_itself() -> None:
    volume = _volume()
    grid = _grid()
    assert grid.shape == (DEPTH, HEIGHT, WIDTH, 3)
    assert grid.min() > -1 and grid.max() < 1  # voxel centres, never the cube's faces
    torch.testing.assert_close(warp(volume, grid.expand(2, -1, -1, -1, -1)), volume, atol=1e-5, rtol=0)


def test_zero_deltas_and_identity_pose_reproduce_the_volume_through_both_warps() -> None:
    volume, grid = _volume(), _grid()
    zeros = torch.zeros(2, DEPTH, HEIGHT, WIDTH, 3)
    pose = identity_pose(2)
    to_canonical = source_to_canonical_grid(grid, zeros, rotation=pose.rotation, translation=pose.translation)
    canonical = warp(volume, to_canonical)
    to_driver = canonical_to_driver_grid(grid, zeros, rotation=pose.rotation, translation=pose.translation)
    torch.testing.assert_close(canonical, volume, atol=1e-5, rtol=0)
    torch.testing.assert_close(warp(canonical, to_driver), volume, atol=1e-5, rtol=0)


def test_a_double_normalised_grid_is_caught() -> None:
    """The public re-implementations' bug: a grid already in [-1, 1] normalised again as if it held
    voxel indices. It does not reproduce the volume, so the identity test above would catch it."""
    volume, grid = _volume(), _grid()
    sizes = torch.tensor([WIDTH, HEIGHT, DEPTH], dtype=grid.dtype)
    double_normalised = grid * 2 / (sizes - 1) - 1
    error = (warp(volume, double_normalised.expand(2, -1, -1, -1, -1)) - volume).abs().max()
    assert error > 0.1


@pytest.mark.parametrize(("axis", "dim"), [(0, -1), (1, -2), (2, -3)])  # x -> W, y -> H, z -> D
def test_a_one_voxel_translation_shifts_the_volume_by_exactly_one_voxel(axis: int, dim: int) -> None:
    volume, grid = _volume(), _grid()
    shift = [0.0, 0.0, 0.0]
    shift[axis] = voxel_size(volume.shape[dim])
    zeros = torch.zeros(2, DEPTH, HEIGHT, WIDTH, 3)
    pose = _pose(2, translation=tuple(shift))
    count = volume.shape[dim]
    # canonical -> driver moves the content by +t: out[i] = in[i - 1].
    moved = warp(volume, canonical_to_driver_grid(grid, zeros, rotation=pose.rotation, translation=pose.translation))
    torch.testing.assert_close(moved.narrow(dim, 1, count - 1), volume.narrow(dim, 0, count - 1), atol=1e-5, rtol=0)
    # source -> canonical undoes the source pose: out[i] = in[i + 1].
    back = warp(volume, source_to_canonical_grid(grid, zeros, rotation=pose.rotation, translation=pose.translation))
    torch.testing.assert_close(back.narrow(dim, 0, count - 1), volume.narrow(dim, 1, count - 1), atol=1e-5, rtol=0)
    # A translation in the other grid convention (align_corners=True: one voxel = 2/(N-1)) is not one voxel here.
    assert not ALIGN_CORNERS
    wrong = _pose(2, translation=tuple(2 / (count - 1) if i == axis else 0.0 for i in range(3)))
    shifted_wrongly = warp(volume, canonical_to_driver_grid(grid, zeros, rotation=wrong.rotation, translation=wrong.translation))
    assert (shifted_wrongly.narrow(dim, 1, count - 1) - volume.narrow(dim, 0, count - 1)).abs().max() > 0.05


def test_a_quarter_roll_is_an_exact_rotation_and_the_driver_warp_undoes_the_source_warp() -> None:
    volume = torch.randn(1, 2, 3, 6, 6, generator=torch.Generator().manual_seed(3))  # square H = W
    grid = identity_grid(depth=3, height=6, width=6)
    zeros = torch.zeros(1, 3, 6, 6, 3)
    pose = _pose(1, rotation=(0.0, 0.0, torch.pi / 2))
    canonical = warp(volume, source_to_canonical_grid(grid, zeros, rotation=pose.rotation, translation=pose.translation))
    torch.testing.assert_close(canonical, torch.rot90(volume, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    driver = warp(canonical, canonical_to_driver_grid(grid, zeros, rotation=pose.rotation, translation=pose.translation))
    torch.testing.assert_close(driver, volume, atol=1e-5, rtol=0)


def test_unposed_inverts_posed_for_any_pose() -> None:
    grid = _grid()
    rotation = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.4, -0.7]])
    translation = torch.tensor([[0.1, -0.05, 0.2], [0.0, 0.3, -0.1]])
    round_trip = unposed(posed(grid, rotation=rotation, translation=translation), rotation=rotation, translation=translation)
    torch.testing.assert_close(round_trip, grid.expand(2, -1, -1, -1, -1), atol=1e-6, rtol=0)


def test_model_with_zero_deltas_and_identity_pose_reproduces_the_source_volume() -> None:
    torch.manual_seed(0)
    model = BaseModel(config=base_config("tiny", pose_source="given")).eval()
    for generator in (model.warp_to_canonical, model.warp_to_driver):
        torch.nn.init.zeros_(generator.head.weight)
        torch.nn.init.zeros_(generator.head.bias)
    source = _images(2, 64, seed=1)
    with torch.no_grad():
        appearance = model.encode_appearance(source)
        motion = model.encode_motion(source, pose=identity_pose(2))
        canonical = model.to_canonical(appearance.volume, descriptor=appearance.descriptor, motion=motion)
        driver = model.to_driver(canonical.volume, descriptor=appearance.descriptor, motion=motion)
    identity = identity_grid(depth=4, height=16, width=16).expand(2, -1, -1, -1, -1)
    torch.testing.assert_close(canonical.grid, identity, atol=1e-6, rtol=0)
    torch.testing.assert_close(driver.volume, appearance.volume, atol=1e-5, rtol=1e-5)


# -- shapes per preset ------------------------------------------------------------------------------


def _check_output(out: BaseOutput, config: BaseConfig, batch: int) -> None:
    resolution, volume = config.resolution, config.volume_shape
    assert isinstance(out, BaseOutput)
    assert out.rgb.shape == (batch, 3, resolution, resolution)
    assert out.alpha.shape == (batch, 1, resolution, resolution)
    for field in (out.source_volume, out.canonical_volume, out.driver_volume):
        assert field.shape == (batch, *volume)
    assert out.descriptor.shape == (batch, *config.descriptor_shape)
    for grid in (out.source_to_canonical, out.canonical_to_driver):
        assert grid.shape == (batch, config.volume_depth, config.volume_size, config.volume_size, 3)
    for motion in (out.source_motion, out.driver_motion):
        assert motion.rotation.shape == motion.translation.shape == (batch, 3)
        assert motion.expression.shape == (batch, config.expression_dim)


@pytest.mark.parametrize(("preset", "batch"), [("tiny", 2), ("cpu128", 1)])
def test_real_forward_shapes_and_ranges(preset: str, batch: int) -> None:
    torch.manual_seed(0)
    config = base_config(preset)
    model = BaseModel(config=config).eval()
    with torch.no_grad():
        out = model(_images(batch, config.resolution, seed=1), _images(batch, config.resolution, seed=2))
    _check_output(out, config, batch)
    for tensor in (out.rgb, out.alpha, out.driver_volume, out.descriptor):
        assert torch.isfinite(tensor).all()
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1 and out.alpha.min() >= 0 and out.alpha.max() <= 1


@pytest.mark.parametrize("preset", ["paper256", "paper512"])
def test_paper_preset_shapes_on_the_meta_device(preset: str) -> None:
    """Shapes only: built and run on the meta device, nothing is allocated."""
    config = base_config(preset)
    with torch.device("meta"):
        model = BaseModel(config=config)
        images = torch.empty(1, 3, config.resolution, config.resolution)
        out = model(images, images)
    _check_output(out, config, 1)


def test_paper512_source_volume_is_96x16x64x64() -> None:
    config = base_config("paper512")
    assert config.volume_shape == (96, 16, 64, 64)
    assert config.descriptor_shape == (512, 4, 4) and config.expression_dim == 512
    with torch.device("meta"):
        appearance = BaseModel(config=config).encode_appearance(torch.empty(2, 3, 512, 512))
    assert appearance.volume.shape == (2, 96, 16, 64, 64)


def test_batch_samples_are_independent() -> None:
    torch.manual_seed(0)
    model = BaseModel(config=base_config("tiny")).eval()
    sources, drivers = _images(3, 64, seed=1), _images(3, 64, seed=2)
    with torch.no_grad():
        batched = model(sources, drivers)
        single = model(sources[1:2], drivers[1:2])
    torch.testing.assert_close(batched.rgb[1:2], single.rgb, atol=1e-5, rtol=1e-4)


# -- gradients, pose modes, configs -----------------------------------------------------------------


def test_gradients_reach_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    model = BaseModel(config=base_config("tiny")).train()
    out = model(_images(2, 64, seed=1), _images(2, 64, seed=2))
    loss = out.rgb.mean() + out.alpha.mean() + out.canonical_volume.square().mean() + out.driver_motion.expression.square().mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad, name
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_pose_source_given_requires_a_pose_and_learned_refuses_one() -> None:
    torch.manual_seed(0)
    images = _images(1, 64, seed=1)
    given = BaseModel(config=base_config("tiny", pose_source="given"))
    assert given.motion_encoder.pose is None
    with pytest.raises(ValueError, match="pass the head pose"):
        given(images, images)
    pose = _pose(1, rotation=(0.1, 0.0, 0.0))
    out = given(images, images, source_pose=pose, driver_pose=pose)
    assert torch.equal(out.driver_motion.rotation, pose.rotation)
    learned = BaseModel(config=base_config("tiny"))
    with pytest.raises(ValueError, match="do not pass one"):
        learned(images, images, source_pose=pose, driver_pose=pose)


def test_config_validation_and_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        base_config("huge")
    import dataclasses

    tiny = BASE_PRESETS["tiny"]
    with pytest.raises(ValueError, match="decoder_channels"):
        dataclasses.replace(tiny, decoder_channels=(32, 16))
    with pytest.raises(ValueError, match="warp_start_depth"):
        dataclasses.replace(tiny, warp_start_depth=3)
    with pytest.raises(ValueError, match="appearance_channels"):
        dataclasses.replace(tiny, appearance_channels=(16, 32))


def test_parameter_counts_cover_the_model_and_match_the_documented_table() -> None:
    rows = {
        match[0]: [int(count.replace(",", "")) for count in match[1].split()]
        for match in re.findall(r"^ {4}(\w+) +\d+ +\S+ +([\d, ]+)$", base_module.__doc__ or "", flags=re.MULTILINE)
    }
    assert set(rows) == set(BASE_PRESETS)
    for preset in BASE_PRESETS:
        with torch.device("meta"):
            model = BaseModel(config=base_config(preset))
        counts = parameter_counts(model)
        assert list(counts) == ["E_app", "E_mtn", "W_s→c", "W_c→d", "G3D", "G2D"]
        total = sum(parameter.numel() for parameter in model.parameters())
        assert sum(counts.values()) == total, preset
        assert rows[preset] == [*counts.values(), total], preset


# -- E_mtn's eye and mouth crops ------------------------------------------------------------------


def _crops_teacher() -> BaseModel:
    torch.manual_seed(0)
    return BaseModel(config=base_config("tiny", pose_source="pretrained", head_pose_preset="tiny", feature_crops=True))


def test_feature_crops_need_the_frozen_pose_network_and_train_with_the_rest() -> None:
    import dataclasses

    with pytest.raises(ValueError, match="feature_crops"):
        dataclasses.replace(BASE_PRESETS["tiny"], feature_crops=True)  # learned pose: nothing to place the crops
    with pytest.raises(ValueError, match="feature_crops"):
        base_config("tiny", feature_crops=True)
    model = _crops_teacher().train()
    crops = model.motion_encoder.crops
    assert crops is not None and crops.eye_size == (12, 16) and crops.mouth_size == (16, 16)  # 64 px: half of 128 px's
    out = model(_images(2, 64, seed=1), _images(2, 64, seed=2))
    (out.rgb.mean() + out.driver_motion.expression.square().mean()).backward()
    for name, parameter in crops.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    head_pose = model.motion_encoder.head_pose
    assert head_pose is not None and not head_pose.training and all(p.grad is None for p in head_pose.parameters())


def test_feature_crops_sit_on_the_renders_eyes_and_mouth() -> None:
    """Placed by a pose, the average face's eyes and mouth land near a render's own (neutral faces of new identities,
    random poses): 0.05 inter-ocular distances on average, 0.15 at worst; the pose's yaw with its sign flipped would not."""
    import dataclasses

    from models.data.heads import SyntheticHeads, neutral_motion, sample_identities, sample_motions
    from models.face_crops import FaceFrame
    from models.megaportraits.head_pose import ImagePose

    generator = torch.Generator().manual_seed(5)
    identities = sample_identities(32, generator=generator)
    motions = dataclasses.replace(sample_motions(32, generator=generator), expression=neutral_motion(32).expression)
    truth = FaceFrame.from_landmarks(SyntheticHeads(resolution=128).landmarks(identities, motions))
    pose = ImagePose(
        rotation=torch.stack([motions.yaw, motions.pitch, motions.roll], dim=1),
        translation=torch.stack([motions.tx, motions.ty], dim=1),
        scale=motions.scale,
    )
    crops = _crops_teacher().motion_encoder.crops
    assert crops is not None

    def misses(placed: FaceFrame) -> torch.Tensor:
        parts = ("left_eye", "right_eye", "mouth")
        return torch.stack([(getattr(placed, part) - getattr(truth, part)).norm(dim=1) / truth.spread for part in parts])  # 3×B

    placed = misses(crops.frame(pose, size=128))
    flipped = misses(crops.frame(pose._replace(rotation=pose.rotation * torch.tensor([-1.0, 1.0, 1.0])), size=128))
    print(f"crop centres off by {placed.mean():.3f} (worst {placed.max():.3f}) inter-ocular distances; yaw flipped: {flipped.mean():.3f}")
    assert placed.mean() < 0.05 and placed.max() < 0.15  # the crops are 1.2 inter-ocular distances wide
    assert flipped.mean() > 2 * placed.max()


# -- G2D reading the driver's expression ------------------------------------------------------------


def test_a_decoder_that_reads_z_draws_differently_for_another_z_and_trains_its_conditioning() -> None:
    torch.manual_seed(0)
    model = BaseModel(config=base_config("tiny", decoder_expression=True)).train()
    assert model.decoder.condition_dim == model.config.expression_dim
    volume = torch.randn(2, *model.config.volume_shape)
    z = torch.randn(2, model.config.expression_dim)
    with torch.no_grad():
        first, second = model.decoder(volume, z), model.decoder(volume, z.flip(0))
    assert (first.rgb - second.rgb).abs().max() > 1e-3  # the same volume, another z: another picture
    with pytest.raises(ValueError, match="reads the expression code"):
        model.decoder(volume)
    with pytest.raises(ValueError, match="takes no expression code"):
        BaseModel(config=base_config("tiny")).decoder(volume, z)
    out = model(_images(2, 64, seed=1), _images(2, 64, seed=2))
    out.rgb.mean().backward()
    scale = model.decoder.up[0].norm_first.scale.weight  # G2D's norm on z
    assert scale.grad is not None and scale.grad.abs().sum() > 0
