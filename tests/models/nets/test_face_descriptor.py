"""The face network against dlib itself, on real photographs.

dlib (dlib-bin, requirements-reference.txt) detects faces, places its 5 landmarks and cuts its 150×150 chip;
its own ResNet (face-recognition-models' .dat) and our port then describe the same chip. The photographs:
skimage's astronaut and the demo photos inside the pinned @vladmandic/face-api package in the nets folder,
read from the package at test time (their licence is not stated, so they are never copied here).
"""

from __future__ import annotations

import importlib.util
import io
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from models.nets.face_descriptor import (
    CHIP_PADDING,
    CHIP_SIZE,
    DESCRIPTOR_SIZE,
    FIVE_POINT_TEMPLATE,
    IBUG68_FIVE_POINTS,
    FaceDescriptor,
    align_face_chips,
    chip_to_image_transforms,
)
from models.nets.weights import net_file

DEMO_PHOTOS = ("sample2.jpg", "sample3.jpg", "sample4.jpg")  # 7 faces, about 200 px wide
MIN_COSINE = 0.999  # the port's weights are face-api's uint8-quantised copy of dlib's, hence not 1.0


@dataclass(frozen=True)
class ReferenceFace:
    name: str
    image: np.ndarray  # H×W×3 uint8 RGB, the whole photograph
    points5: np.ndarray  # 5×2 float, dlib's 5-point landmarks (x, y) in the photograph
    chip: np.ndarray  # 150×150×3 uint8, dlib.get_face_chip
    descriptor: np.ndarray  # 128, dlib's own network on the chip


def photographs() -> dict[str, np.ndarray]:
    images = {"astronaut": skimage.data.astronaut()}
    with tarfile.open(net_file("face-api-package")) as package:
        for name in DEMO_PHOTOS:
            member = package.extractfile(f"package/demo/{name}")
            assert member is not None, f"{name} is not in the face-api package"
            images[name] = np.asarray(Image.open(io.BytesIO(member.read())).convert("RGB"))
    return images


@pytest.fixture(scope="module")
def reference_faces() -> list[ReferenceFace]:
    dlib = pytest.importorskip("dlib", reason="dlib is not installed: the reference test needs dlib-bin (requirements-reference.txt)")
    # face_recognition_models' __init__ needs pkg_resources; only its data files are used, so find them without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations, "face-recognition-models is not installed (requirements-reference.txt)"
    model_dir = Path(spec.submodule_search_locations[0]) / "models"
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_dir / "shape_predictor_5_face_landmarks.dat"))
    recognizer = dlib.face_recognition_model_v1(str(model_dir / "dlib_face_recognition_resnet_model_v1.dat"))
    faces = []
    for name, image in photographs().items():
        for index, box in enumerate(detector(image, 0)):
            shape = predictor(image, box)
            chip = dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            faces.append(
                ReferenceFace(
                    name=f"{name}#{index}",
                    image=image,
                    points5=np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float32),
                    chip=chip,
                    descriptor=np.array(recognizer.compute_face_descriptor(chip)),
                )
            )
    assert len(faces) >= 5, f"dlib found {len(faces)} faces in the test photographs"
    return faces


def as_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×H×W float in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def landmarks68_from(points5: np.ndarray) -> torch.Tensor:
    """A 1×68×2 iBUG array holding only dlib's five points at their iBUG places (the rest zero: unused)."""
    landmarks = torch.zeros(1, 68, 2)
    landmarks[0, list(IBUG68_FIVE_POINTS)] = torch.from_numpy(points5)
    return landmarks


def test_descriptor_matches_dlib_on_dlib_chips(face_network: FaceDescriptor, reference_faces: list[ReferenceFace]) -> None:
    chips = torch.cat([as_tensor(face.chip) for face in reference_faces])  # F×3×150×150
    with torch.no_grad():
        ours = face_network(chips)  # F×128
    theirs = torch.from_numpy(np.stack([face.descriptor for face in reference_faces])).float()
    cosines = F.cosine_similarity(ours, theirs, dim=1)
    report = {face.name: round(float(cosine), 5) for face, cosine in zip(reference_faces, cosines)}
    print("cosine to dlib per face:", report)
    assert ours.shape == (len(reference_faces), DESCRIPTOR_SIZE)
    assert bool((cosines >= MIN_COSINE).all()), report
    # Not normalised, as dlib's: the same length, well inside dlib's same-person distance of 0.6.
    assert torch.allclose(ours.norm(dim=1), theirs.norm(dim=1), rtol=0.01)
    assert float((ours - theirs).norm(dim=1).max()) < 0.05


def test_alignment_reproduces_dlib_chips(face_network: FaceDescriptor, reference_faces: list[ReferenceFace]) -> None:
    chips = torch.cat([align_face_chips(as_tensor(face.image), landmarks68_from(face.points5)) for face in reference_faces])
    dlib_chips = torch.cat([as_tensor(face.chip) for face in reference_faces])
    pixel_error = (chips - dlib_chips).abs().mean(dim=(1, 2, 3)) * 255  # F, in 0–255 grey levels
    assert float(pixel_error.max()) < 1.0, pixel_error  # dlib rounds to uint8: about 0.5 remains
    with torch.no_grad():
        ours = face_network(chips)
    theirs = torch.from_numpy(np.stack([face.descriptor for face in reference_faces])).float()
    assert float(F.cosine_similarity(ours, theirs, dim=1).min()) >= MIN_COSINE


def test_chip_transform_inverts_a_known_similarity() -> None:
    """Landmarks made by a known similarity of the template give back that similarity (dlib's pixel-span convention)."""
    scale, angle, offset = 1.7, math.radians(12.0), torch.tensor([210.0, 95.0])
    rotation = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    template = (CHIP_PADDING + torch.tensor(FIVE_POINT_TEMPLATE)) / (2 * CHIP_PADDING + 1) * CHIP_SIZE  # 5×2, chip pixels
    points5 = (template @ rotation.T + offset).unsqueeze(0)  # 1×5×2, image pixels
    transform = chip_to_image_transforms(points5)[0]  # 2×3
    step = (CHIP_SIZE * scale - 1) / (CHIP_SIZE - 1) / scale  # dlib spans size·scale - 1 pixels over size - 1 steps
    assert torch.allclose(transform[:, :2], rotation * step, atol=1e-5)
    middle = torch.full((2,), (CHIP_SIZE - 1) / 2)
    centre = rotation @ torch.full((2,), CHIP_SIZE / 2) + offset
    assert torch.allclose(transform[:, :2] @ middle + transform[:, 2], centre, atol=1e-4)


def test_descriptor_is_differentiable_through_alignment(face_network: FaceDescriptor) -> None:
    """An identity loss: gradients reach both the image and the landmarks."""
    image = as_tensor(skimage.data.astronaut()).requires_grad_(True)  # 1×3×512×512
    template = (CHIP_PADDING + torch.tensor(FIVE_POINT_TEMPLATE)) / (2 * CHIP_PADDING + 1) * CHIP_SIZE
    landmarks = torch.zeros(1, 68, 2)
    landmarks[0, list(IBUG68_FIVE_POINTS)] = template * 0.8 + torch.tensor([160.0, 60.0])  # about the astronaut's face
    landmarks.requires_grad_(True)
    target = torch.randn(1, DESCRIPTOR_SIZE)
    loss = 1 - F.cosine_similarity(face_network(align_face_chips(image, landmarks)), target).mean()
    loss.backward()
    assert image.grad is not None and landmarks.grad is not None
    assert float(image.grad.abs().sum()) > 0 and bool(torch.isfinite(image.grad).all())
    assert float(landmarks.grad[0, list(IBUG68_FIVE_POINTS)].abs().sum()) > 0
    assert not any(parameter.requires_grad for parameter in face_network.parameters())


def test_refuses_chips_of_another_size(face_network: FaceDescriptor) -> None:
    with pytest.raises(ValueError, match="150"):
        face_network(torch.zeros(1, 3, 112, 112))
