"""Few-shot talking heads' networks (models/fewshot/): the landmark image draws each part's polyline in its colour and
nothing elsewhere; embedder, generator and discriminator give the documented shapes at every preset's resolution,
gradients reach every parameter, and a few steps of the reconstruction loss lower it."""

from __future__ import annotations

import pytest
import torch

from contract.landmark_image import PART_COLOURS
from contract.landmarks import LANDMARK_POLYLINES, canonical_ibug68
from models.fewshot.config import FEWSHOT_PRESETS, FewShotConfig, fewshot_config
from models.fewshot.discriminator import FewShotDiscriminator
from models.fewshot.embedder import FewShotEmbedder
from models.fewshot.generator import FewShotGenerator
from models.fewshot.landmark_raster import LandmarkRaster


def canonical_landmarks(batch: int, size: int) -> torch.Tensor:
    return torch.from_numpy(canonical_ibug68().copy())[None].repeat(batch, 1, 1) * size  # B×68×2 pixels


def test_every_polyline_part_has_a_colour_and_the_68_points_are_all_drawn() -> None:
    assert set(PART_COLOURS) == set(LANDMARK_POLYLINES)
    drawn = {point for points, _ in LANDMARK_POLYLINES.values() for point in points}
    assert drawn == set(range(68))


def test_the_landmark_image_draws_lines_where_the_parts_are_and_black_elsewhere() -> None:
    size = 64
    raster = LandmarkRaster(size=size)
    landmarks = canonical_landmarks(2, size)
    landmarks[1, :, 0] += 8  # the second face 8 px to the right
    image = raster(landmarks)
    assert image.shape == (2, 3, size, size) and image.min() >= 0 and image.max() <= 1
    jaw_start = landmarks[0, 0].long()  # a point of the jaw: drawn in the jaw's colour (white)
    assert torch.allclose(image[0, :, jaw_start[1], jaw_start[0]], torch.tensor(PART_COLOURS["jaw"]), atol=0.3)
    mouth = landmarks[0, 51].long()  # the top of the outer lip: the lips' colour (red dominant)
    red, green, _ = image[0, :, mouth[1], mouth[0]]
    assert red > 0.5 and green < 0.3
    assert image[0, :, :3, :].max() == 0 and image[0, :, :, :3].max() == 0  # far from every line: black
    shifted = torch.roll(image[0], shifts=8, dims=2)
    assert (shifted[:, :, 16:48] - image[1][:, :, 16:48]).abs().max() < 1e-4  # moving the points moves the drawing
    with pytest.raises(ValueError, match="B×68×2"):
        raster(landmarks[:, :60])


@pytest.mark.parametrize("preset", ["tiny", "cpu128"])
def test_shapes_of_embedder_generator_and_discriminator(preset: str) -> None:
    config = fewshot_config(preset, num_videos=3)
    size, shots = config.resolution, 2
    frames, landmark_images = torch.rand(2, shots, 3, size, size), torch.rand(2, shots, 3, size, size)
    embedder, generator, discriminator = (
        FewShotEmbedder(config=config),
        FewShotGenerator(config=config),
        FewShotDiscriminator(config=config),
    )
    with torch.no_grad():
        embedding = embedder(frames, landmark_images)
        assert embedding.shape == (2, config.embedding_dim)
        one = embedder(frames[:, :1], landmark_images[:, :1])  # K is free: the mean over frames
        assert one.shape == (2, config.embedding_dim)
        out = generator(landmark_images[:, 0], embedding)
        assert out.rgb.shape == (2, 3, size, size) and out.alpha.shape == (2, 1, size, size)
        assert 0 <= out.rgb.min() and out.rgb.max() <= 1
        judged = discriminator(out.rgb, landmark_images[:, 0], torch.tensor([0, 2]))
        assert judged.realism.shape == (2,) and judged.vector.shape == (2, config.embedding_dim)
        assert [f.shape[-1] for f in judged.features] == [size // 2 ** (k + 1) for k in range(len(config.channels))]
        with_rows = discriminator.realism_with(out.rgb, landmark_images[:, 0], embedding)  # fine-tuning: W_i = ê
        assert with_rows.realism.shape == (2,)


def test_paper256_preset_is_the_papers_layout() -> None:
    config = FEWSHOT_PRESETS["paper256"]
    assert (config.resolution, config.embedding_dim, config.bottleneck_resolution, config.bottleneck_blocks) == (256, 512, 8, 5)
    with pytest.raises(ValueError, match="divisible"):
        FewShotConfig(resolution=100, embedding_dim=8, channels=(8, 8, 8), attention_after=0, bottleneck_blocks=1)
    with pytest.raises(ValueError, match="unknown few-shot preset"):
        fewshot_config("huge")


def test_gradients_reach_every_parameter_and_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    config = fewshot_config("tiny", num_videos=2)
    embedder, generator, discriminator = (
        FewShotEmbedder(config=config),
        FewShotGenerator(config=config),
        FewShotDiscriminator(config=config),
    )
    for module in (embedder, generator, discriminator):  # the attention gates start at 0: open them to test their paths
        for name, parameter in module.named_parameters():
            if name.endswith("gate"):
                parameter.data.fill_(0.5)
    size = config.resolution
    raster = LandmarkRaster(size=size)
    landmark_images = raster(canonical_landmarks(2, size))[:, None].repeat(1, 2, 1, 1, 1)  # B×K×3×H×W
    frames = torch.rand(2, 2, 3, size, size)
    target = frames[:, 0]
    # Generator and embedder through reconstruction + the discriminator's realism (its every parameter too).
    embedding = embedder(frames, landmark_images)
    out = generator(landmark_images[:, 0], embedding)
    judged = discriminator(out.rgb, landmark_images[:, 0], torch.tensor([0, 1]))
    loss = (out.rgb - target).abs().mean() + (out.alpha - 1).abs().mean() - judged.realism.mean()
    loss.backward()
    for module in (embedder, generator, discriminator):
        missing = [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{type(module).__name__}: no gradient reaches {missing}"
    optimiser = torch.optim.Adam([*embedder.parameters(), *generator.parameters()], lr=2e-3)
    losses = []
    for _ in range(15):
        out = generator(landmark_images[:, 0], embedder(frames, landmark_images))
        step_loss = (out.rgb - target).abs().mean()
        optimiser.zero_grad()
        step_loss.backward()
        optimiser.step()
        losses.append(float(step_loss))
    assert losses[-1] < losses[0] * 0.9
