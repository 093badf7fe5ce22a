"""The perceptual network: real ImageNet weights (the classifier names skimage's photographs), its pyramid, and
its perceptual distance."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from models.nets.perceptual import CLASSIFIER_SIZE, HEAD_CHANNELS, PYRAMID_STRIDES, PerceptualFeatures

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


def photograph(name: str, *, size: int = CLASSIFIER_SIZE) -> torch.Tensor:
    """skimage's photograph as 1×3×size×size in [0, 1]: shorter side resized to size, then the centre crop."""
    image = torch.from_numpy(np.array(getattr(skimage.data, name)())).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    height, width = image.shape[2:]
    factor = size / min(height, width)
    image = F.interpolate(image, size=(round(height * factor), round(width * factor)), mode="bilinear", antialias=True)
    top, left = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
    return image[:, :, top : top + size, left : left + size].clamp(0, 1)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    taps = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, 2 * radius + 1, 2 * radius + 1)  # 3×1×k×k, one per channel
    return F.conv2d(F.pad(image, [radius] * 4, mode="reflect"), kernel, groups=3)


@pytest.mark.parametrize(("name", "classes"), [("chelsea", set(CAT_CLASSES)), ("coffee", COFFEE_CLASSES)])
def test_classifier_names_the_photographs(perceptual_network: PerceptualFeatures, name: str, classes: set[int]) -> None:
    with torch.no_grad():
        probabilities = perceptual_network.classify(photograph(name)).softmax(dim=1)[0]  # 1000
    top5 = probabilities.topk(5)
    print(name, "top-5:", [(int(index), round(float(p), 3)) for p, index in zip(top5.values, top5.indices)])
    assert int(top5.indices[0]) in classes
    assert float(probabilities[list(classes)].sum()) > 0.5


def test_pyramid_and_pooled_shapes(perceptual_network: PerceptualFeatures) -> None:
    with torch.no_grad():
        output = perceptual_network(torch.rand(2, 3, 96, 128))
    assert [tuple(level.shape) for level in output.pyramid] == [
        (2, channels, 96 // stride, 128 // stride) for channels, stride in zip((16, 24, 40, 112, 320), PYRAMID_STRIDES)
    ]
    assert output.pooled.shape == (2, HEAD_CHANNELS)


def test_distance_is_zero_to_itself_and_grows_with_blur(perceptual_network: PerceptualFeatures) -> None:
    image = photograph("chelsea", size=128)
    blurred = torch.cat([gaussian_blur(image, sigma) for sigma in (0.5, 1.0, 2.0, 4.0)])  # 4×3×128×128
    with torch.no_grad():
        to_itself = perceptual_network.perceptual_distance(image, image)
        to_blurred = perceptual_network.perceptual_distance(image.expand(4, -1, -1, -1), blurred)  # 4
    print("distance to itself", float(to_itself), "to blurred copies", to_blurred.tolist())
    assert float(to_itself.abs().max()) < 1e-6
    assert float(to_blurred[0]) > 1e-3
    assert bool((to_blurred[1:] > to_blurred[:-1]).all()), to_blurred


def test_distance_is_a_loss(perceptual_network: PerceptualFeatures) -> None:
    target = photograph("chelsea", size=64)
    prediction = torch.full_like(target, 0.5).requires_grad_(True)
    perceptual_network.train()  # stays in inference mode: frozen batch-norm statistics
    assert not perceptual_network.training
    perceptual_network.perceptual_distance(prediction, target).sum().backward()
    assert prediction.grad is not None and float(prediction.grad.abs().sum()) > 0
    assert not any(parameter.requires_grad for parameter in perceptual_network.parameters())
