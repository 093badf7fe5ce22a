"""The weights folder: pinned files found, missing or corrupt ones refused with one clear error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from models.nets import weights
from models.nets.face_descriptor import FaceDescriptor
from models.nets.perceptual import PerceptualFeatures
from models.nets.weights import FACE_NETWORK, FILES, PERCEPTUAL_NETWORK, NetWeightsError, available, describe, net_file, nets_dir

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]


def test_default_folder_is_the_repository_root_nets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MEGALIVE_NETS_DIR", raising=False)
    assert nets_dir() == REPOSITORY_ROOT / ".nets"
    monkeypatch.setenv("MEGALIVE_NETS_DIR", str(tmp_path))
    assert nets_dir() == tmp_path


def test_installed_files_are_the_pinned_ones() -> None:
    assert available() == {PERCEPTUAL_NETWORK: True, FACE_NETWORK: True}
    assert set(describe().values()) == {"available"}
    for key in FILES:
        net_file(key)


def test_missing_files_make_the_networks_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEGALIVE_NETS_DIR", str(tmp_path))
    assert available() == {PERCEPTUAL_NETWORK: False, FACE_NETWORK: False}
    with pytest.raises(NetWeightsError) as refused:
        PerceptualFeatures()
    message = str(refused.value)
    assert "\n" not in message
    assert "efficientnet-lite0-57934424.pth is missing" in message
    assert FILES["efficientnet-lite0"].sha256 in message and "make nets" in message
    assert "missing" in describe()[FACE_NETWORK]


@pytest.mark.parametrize(
    ("network", "damaged_key"), [(FACE_NETWORK, "face-recognition-weights"), (PERCEPTUAL_NETWORK, "efficientnet-lite0")]
)
def test_a_truncated_file_is_refused(tmp_path: Path, network: str, damaged_key: str) -> None:
    for key in weights.NETWORK_FILES[network]:
        copy = tmp_path / FILES[key].relative_path
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(net_file(key), copy)
    damaged = tmp_path / FILES[damaged_key].relative_path
    damaged.write_bytes(damaged.read_bytes()[:1000])
    assert available(folder=tmp_path)[network] is False
    with pytest.raises(NetWeightsError) as refused:
        (FaceDescriptor if network == FACE_NETWORK else PerceptualFeatures)(nets_dir=tmp_path)
    message = str(refused.value)
    assert "\n" not in message
    assert damaged.name in message and FILES[damaged_key].sha256 in message and "make nets" in message


def test_makefile_pins_the_same_downloads() -> None:
    """The Makefile checks the npm tarball by sha256 before unpacking it; weights.py pins the same tarball."""
    makefile = (REPOSITORY_ROOT / "Makefile").read_text()
    pinned = re.search(r"^FACE_API_SHA\s*:=\s*(\w+)", makefile, flags=re.MULTILINE)
    assert pinned is not None and pinned.group(1) == FILES["face-api-package"].sha256
    for key in FILES:
        assert FILES[key].relative_path.split("/")[0] in makefile
