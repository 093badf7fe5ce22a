"""Fixtures of the models/nets tests: the two pretrained networks, loaded once per session from the pinned files
(`make nets`; a missing file fails with NetWeightsError naming it)."""

from __future__ import annotations

import pytest

from models.nets.face_descriptor import FaceDescriptor
from models.nets.perceptual import PerceptualFeatures


@pytest.fixture(scope="session")
def face_network() -> FaceDescriptor:
    return FaceDescriptor()


@pytest.fixture(scope="session")
def perceptual_network() -> PerceptualFeatures:
    return PerceptualFeatures()
