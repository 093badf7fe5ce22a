"""contract/: imports with the standard library alone (the hosts ship it), and its model-card reader is the one
the server and the evaluation share (digests checked, one-line errors that are ValueErrors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract import arkit, landmarks
from contract.model_card import ModelCardError, read_model_card

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_contract_imports_without_numpy() -> None:
    probe = (
        "import sys; sys.modules['numpy'] = None; import contract.arkit, contract.landmarks, contract.model_card; "
        "print(len(contract.arkit.ARKIT_CURVES), len(contract.landmarks.CANONICAL_IBUG68_POINTS))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ["61", "68"], result.stdout + result.stderr


def test_arkit_names_and_indices() -> None:
    assert len(arkit.ARKIT_BLENDSHAPES) == arkit.NUM_BLENDSHAPES == 52 and len(set(arkit.ARKIT_CURVES)) == arkit.NUM_CURVES == 61
    assert arkit.ARKIT_CURVES[:52] == arkit.ARKIT_BLENDSHAPES and arkit.ARKIT_CURVES[52:] == arkit.ARKIT_ROTATIONS
    assert arkit.ARKIT_INDEX["jawOpen"] == arkit.CURVE_INDEX["jawOpen"] == 17 and arkit.CURVE_INDEX["headYaw"] == 52
    assert "headYaw" not in arkit.ARKIT_INDEX  # a blendshape column index: rotations have none
    with pytest.raises(TypeError):
        arkit.CURVE_INDEX["jawOpen"] = 0  # type: ignore[index]  # shared by every importer: read-only


def test_landmark_tables_and_box_fit() -> None:
    canonical = landmarks.canonical_ibug68()
    assert canonical.shape == (68, 2) and canonical.dtype == np.float32 and not canonical.flags.writeable
    assert len(landmarks.MEDIAPIPE_TO_IBUG68) == 68 == len(set(landmarks.MEDIAPIPE_TO_IBUG68))
    face = canonical * 180 + (40, 70)  # a face framed by the 180 px box with its corner at (40, 70)
    box = landmarks.crop_box_from_landmarks(face)
    np.testing.assert_allclose(box, (130.0, 160.0, 180.0), rtol=1e-6)
    np.testing.assert_allclose(landmarks.landmarks_in_crop(face, box), canonical, atol=1e-6)


def test_model_card_reader_checks_digests(contract_model_path: Path, tmp_path: Path) -> None:
    card = read_model_card(contract_model_path)
    assert card.avatar_names == ("ada", "bo", "cy") and card.resolution == (32, 32) and card.adapter("arkit") is None
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(contract_model_path.read_bytes() + b"\0")  # other bytes than the sidecar's digest
    copy.with_suffix(".json").write_text(contract_model_path.with_suffix(".json").read_text())
    with pytest.raises(ModelCardError, match="SHA-256 differs") as caught:
        read_model_card(copy)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    sidecar = json.loads(contract_model_path.with_suffix(".json").read_text())
    copy.with_suffix(".json").write_text(json.dumps({**sidecar, "format_version": 99}))
    with pytest.raises(ModelCardError, match="sidecar version 99"):
        read_model_card(copy)
