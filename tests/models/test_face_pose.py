"""Head poses solved from mediapipe's face mesh (models/data/face_pose.py): the canonical mesh read from the pinned
file, poses recovered in the renderer's convention, the calibration against SyntheticHeads, and one-line refusals."""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.landmarks import MEDIAPIPE_TO_IBUG68, canonical_ibug68, crop_box_from_landmarks
from models.data import face_pose
from models.data.face_pose import (
    CANONICAL_ORIGIN,
    EXPRESSION_VERTICES,
    HEAD_UNITS_PER_CM,
    MESH_VERTICES,
    POSE_NAMES,
    CanonicalFace,
    FaceGeometryError,
    calibrate,
    canonical_face,
    load_poses,
    parse_geometry_metadata,
    project_canonical,
    rotation_matrices,
    solve_head_pose,
)
from models.data.heads import DEFAULT_SCALE, neutral_motion, sample_identities
from models.data.heads.geometry import face_layout, head_landmarks, rotation_matrix, surface_z
from models.data.heads.params import Identity
from models.data.paired import DatasetError
from models.data.prepare import PrepareError, prepare_videos
from models.nets.weights import FILES, NetWeightsError, net_file


@pytest.fixture(scope="module")
def face() -> CanonicalFace:
    return canonical_face()


def _random_poses(count: int, seed: int) -> np.ndarray:
    """count×6 poses over the range SyntheticHeads draws and a little beyond."""
    rng = np.random.default_rng(seed)
    low, high = np.array([-0.7, -0.45, -0.4, -0.12, -0.12, 0.55]), np.array([0.7, 0.45, 0.4, 0.12, 0.12, 0.8])
    return rng.uniform(low, high, size=(count, 6))


def _renderer_projection(poses: np.ndarray, face: CanonicalFace) -> np.ndarray:
    """The calibrated canonical mesh drawn as the renderer draws its heads (geometry.project_landmarks: its own
    rotation_matrix, world = s·R·head + (tx, ty), pixel y down), as mediapipe reports a square image's points: N×478×3
    over the crop in [0, 1] (the 10 iris rows after the 468, z unused by the solver and set to the depth)."""
    yaw, pitch, roll, tx, ty, scale = torch.from_numpy(poses).T  # 6 × N
    head = torch.from_numpy(face.head_points()).T  # 3×468
    world = scale.view(-1, 1, 1) * (rotation_matrix(yaw, pitch, roll) @ head)  # N×3×468
    x = (world[:, 0] + tx.unsqueeze(1) + 1) / 2
    y = (1 - (world[:, 1] + ty.unsqueeze(1))) / 2
    points = torch.stack([x, y, -world[:, 2] / 2], dim=2).numpy()  # N×468×3
    return np.concatenate([points, points[:, 468 - 10 :]], axis=1)  # N×478×3: stand-in iris rows (ignored)


def test_the_pose_names_are_the_head_pose_networks_labels() -> None:
    from models.megaportraits.head_pose import LABEL_NAMES

    assert POSE_NAMES == LABEL_NAMES


def test_the_hand_parser_reads_what_mediapipes_own_parser_reads(face: CanonicalFace) -> None:
    protos = pytest.importorskip("mediapipe.modules.face_geometry.protos.geometry_pipeline_metadata_pb2")
    metadata = protos.GeometryPipelineMetadata()
    metadata.ParseFromString(net_file("face-geometry-metadata").read_bytes())
    vertices = np.array(metadata.canonical_mesh.vertex_buffer).reshape(MESH_VERTICES, 5)[:, :3]  # 2340 -> 468×5 -> 468×3
    np.testing.assert_array_equal(face.vertices, vertices)
    np.testing.assert_array_equal(face.basis, [ref.landmark_id for ref in metadata.procrustes_landmark_basis])
    weights = np.array([ref.weight for ref in metadata.procrustes_landmark_basis])
    np.testing.assert_allclose(face.weights, weights / weights.sum(), rtol=1e-6)
    assert face.basis.size == 33 and set(EXPRESSION_VERTICES) <= set(face.basis.tolist())
    # The axes the module docstring relies on: x to image right on a frontal face (the subject's left eye's outer
    # corner 263 right of the right eye's 33), y up (forehead 10 above chin 152), z out of the face (the nose's tip 4 in
    # front of every other vertex).
    assert face.vertices[263, 0] > 0 > face.vertices[33, 0] and face.vertices[10, 1] > face.vertices[152, 1]
    assert face.vertices[:, 2].argmax() == 4


def _varint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out, value = out + bytes([value & 0x7F | 0x80]), value >> 7
    return out + bytes([value])


def _field(number: int, value: int | bytes) -> bytes:
    """One protobuf field: a varint (wire type 0) for an int, length-delimited (wire type 2) for bytes."""
    if isinstance(value, int):
        return _varint(number << 3 | 0) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def test_a_packed_vertex_buffer_reads_the_same_and_garbage_is_refused(face: CanonicalFace) -> None:
    """Protobuf writers may pack repeated floats; the pinned file does not, so the packed form is built here."""
    vertex_buffer = np.concatenate([face.vertices, np.zeros((MESH_VERTICES, 2))], axis=1).astype("<f4").tobytes()  # 468×5
    mesh = _field(1, 0) + _field(3, vertex_buffer)  # vertex_type VERTEX_PT, packed vertex_buffer
    weight = _varint(2 << 3 | 5) + struct.pack("<f", 0.25)  # a fixed32 float
    refs = b"".join(_field(2, _field(1, index) + weight) for index in (1, 33, 263, 10))
    parsed = parse_geometry_metadata(_field(1, mesh) + refs + _field(3, 1))  # + input_source FACE_LANDMARK_PIPELINE
    np.testing.assert_allclose(parsed.vertices, face.vertices, atol=1e-6)
    assert parsed.basis.tolist() == [1, 33, 263, 10] and np.allclose(parsed.weights, 0.25)
    with pytest.raises(FaceGeometryError, match=r"^notes.txt is not a mediapipe geometry pipeline metadata file"):
        parse_geometry_metadata(b"\x0a\xff\xff\x03oops", source="notes.txt")
    with pytest.raises(FaceGeometryError, match="468 position\\+texture vertices"):
        parse_geometry_metadata(refs, source="refs only")


def test_known_poses_are_recovered_in_the_renderers_convention(face: CanonicalFace) -> None:
    poses = _random_poses(64, seed=0)
    solved = solve_head_pose(_renderer_projection(poses, face), face=face)
    assert solved.shape == (64, 6)
    assert np.degrees(np.abs(solved[:, :3] - poses[:, :3])).max() < 0.5
    np.testing.assert_allclose(solved[:, 3:], poses[:, 3:], atol=1e-4)
    # The module's own rotation and projection are the renderer's.
    np.testing.assert_allclose(rotation_matrices(poses[:, :3]), rotation_matrix(*torch.from_numpy(poses[:, :3]).T).numpy(), atol=1e-12)
    np.testing.assert_allclose(project_canonical(poses, face=face), _renderer_projection(poses, face)[:, :468], atol=1e-12)
    # A single face (P×C), 468 points, x and y only.
    one = solve_head_pose(_renderer_projection(poses[:1], face)[0, :468, :2], face=face)
    assert one.shape == (6,) and np.allclose(one, solved[0], atol=1e-9)


def test_the_signs_follow_the_renderers_description(face: CanonicalFace) -> None:
    """geometry.py: +yaw turns the nose towards image right, +pitch lifts it, +roll turns the head counter-clockwise."""
    frontal = np.array([0.0, 0.0, 0.0, 0.0, 0.0, DEFAULT_SCALE])

    def nose(points: np.ndarray) -> np.ndarray:  # the nose tip (1) from the bridge between the eyes (168): 2, y down
        return points[1, :2] - points[168, :2]

    straight = nose(_renderer_projection(frontal[None], face)[0])
    for index, name in enumerate(("yaw", "pitch", "roll")):
        pose = frontal.copy()
        pose[index] = 0.3
        points = _renderer_projection(pose[None], face)[0]  # 478×3 over the crop, y down
        if name == "yaw":
            assert nose(points)[0] > straight[0] + 0.02  # the tip moves right
        elif name == "pitch":
            assert nose(points)[1] < straight[1] - 0.02  # the tip moves up
        else:
            assert points[263, 1] < points[33, 1] - 0.05  # counter-clockwise: the image-right eye rises
        assert solve_head_pose(points, face=face)[index] == pytest.approx(0.3, abs=1e-6)


def test_a_wrong_convention_would_be_caught(face: CanonicalFace) -> None:
    poses = _random_poses(16, seed=1)
    poses[:, 0] = np.where(np.abs(poses[:, 0]) < 0.2, 0.3, poses[:, 0])  # yaw far enough from 0 to tell its sign
    points = _renderer_projection(poses, face)
    solved = solve_head_pose(points, face=face)
    for index in range(3):  # yaw's, pitch's or roll's sign flipped: the mesh lands elsewhere
        wrong = solved.copy()
        wrong[:, index] *= -1
        moved = np.abs(project_canonical(wrong, face=face)[..., :2] - points[:, :468, :2]).max(axis=(1, 2))  # N
        telling = np.abs(solved[:, index]) > 0.05  # an angle near 0 looks the same either way
        assert telling.sum() >= 8 and np.all(moved[telling] > 0.01), (POSE_NAMES[index], moved)


def test_frames_of_a_batch_are_independent(face: CanonicalFace, monkeypatch: pytest.MonkeyPatch) -> None:
    poses = _random_poses(6, seed=2)
    points = _renderer_projection(poses, face)
    together = solve_head_pose(points, face=face)
    alone = np.stack([solve_head_pose(points[index : index + 1], face=face)[0] for index in range(6)])
    np.testing.assert_allclose(together, alone, atol=1e-12)
    monkeypatch.setattr(face_pose, "FIT_CHUNK", 4)  # long videos are fitted in chunks
    np.testing.assert_allclose(solve_head_pose(points, face=face), together, atol=1e-12)
    monkeypatch.undo()
    noisy = points.copy()
    noisy[2] += np.random.default_rng(0).normal(0, 0.01, noisy[2].shape)
    changed = solve_head_pose(noisy, face=face)
    np.testing.assert_array_equal(np.delete(changed, 2, axis=0), np.delete(together, 2, axis=0))
    assert np.abs(changed[2] - together[2]).max() > 1e-4
    # Noise of about a pixel of a 256 px crop costs well under a degree.
    jitter = points + np.random.default_rng(1).normal(0, 1 / 256, points.shape)
    assert np.degrees(np.abs(solve_head_pose(jitter, face=face)[:, :3] - poses[:, :3])).mean() < 1.0


def test_malformed_points_are_refused(face: CanonicalFace) -> None:
    with pytest.raises(ValueError, match="N×468"):
        solve_head_pose(np.zeros((2, 68, 2)), face=face)
    points = _renderer_projection(_random_poses(2, seed=3), face)
    points[1, 7, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        solve_head_pose(points, face=face)


def _mean_head_landmarks() -> np.ndarray:
    """The 68 iBUG landmarks of the mean SyntheticHeads identity in head space (68×3 head units)."""
    identities = sample_identities(4096, generator=torch.Generator().manual_seed(0))
    mean = Identity(**{field.name: getattr(identities, field.name).mean(dim=0, keepdim=True) for field in dataclasses.fields(Identity)})
    layout = face_layout(mean, neutral_motion(1))
    x, y = head_landmarks(layout)  # 1×68 each
    return torch.stack([x, y, surface_z(x, y, layout)], dim=2)[0].double().numpy()  # 1×68×3 -> 68×3


def test_the_calibration_constants_are_recomputed(face: CanonicalFace) -> None:
    head = _mean_head_landmarks()
    scale, origin = calibrate(head, face)
    assert scale == pytest.approx(HEAD_UNITS_PER_CM, abs=1e-4)
    np.testing.assert_allclose(origin, CANONICAL_ORIGIN, atol=1e-4)
    # Frontal means the same thing: the canonical mesh's 68 points, pitched by p, match the mean head's frontal 2-D
    # layout (after a least-squares scale and shift) best within 2° of p = 0 (so no pitch offset is applied).
    mesh = face.vertices[list(MEDIAPIPE_TO_IBUG68)]  # 68×3
    target = head[:, :2] - head[:, :2].mean(axis=0)

    def misfit(pitch: float) -> float:
        seen = (mesh @ rotation_matrices(np.array([0.0, pitch, 0.0])).T)[:, :2]  # 68×3 -> 68×2, pitched and projected
        seen = seen - seen.mean(axis=0)
        scale = (seen * target).sum() / (seen**2).sum()
        return float(((scale * seen - target) ** 2).sum())

    pitches = np.radians(np.arange(-15.0, 15.25, 0.25))
    assert abs(math.degrees(pitches[np.argmin([misfit(p) for p in pitches])])) <= 2.0
    # And a frontal, centred mesh at the default scale lands where prepare frames real faces (the mean synthetic ones).
    frontal = project_canonical(np.array([[0.0, 0.0, 0.0, 0.0, 0.0, DEFAULT_SCALE]]), face=face)[0]
    distance = np.linalg.norm(frontal[list(MEDIAPIPE_TO_IBUG68), :2] - canonical_ibug68(), axis=1)  # 68
    assert distance.mean() < 0.02


def test_a_missing_mesh_file_is_refused_in_one_line_naming_make_nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NetWeightsError) as refused:
        canonical_face(folder=tmp_path)
    message = str(refused.value)
    assert "\n" not in message and "geometry_pipeline_metadata_landmarks.binarypb is missing" in message
    assert "make nets" in message and FILES["face-geometry-metadata"].sha256 in message
    # prepare refuses before doing any work, and leaves nothing behind.
    monkeypatch.setenv("MEGALIVE_NETS_DIR", str(tmp_path / "nets"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "clip.mp4").write_bytes(b"not a video")
    with pytest.raises(PrepareError, match=r"^cannot solve head poses: .*make nets") as prepare_refused:
        prepare_videos(tmp_path / "src", tmp_path / "dst", progress=False)
    assert "\n" not in str(prepare_refused.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


def test_a_folder_prepared_before_poses_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as refused:
        load_poses(tmp_path)
    message = str(refused.value)
    assert "\n" not in message and "has no solved head poses (poses.npy)" in message and "megalive-train prepare" in message
    np.save(tmp_path / "poses.npy", np.zeros((5, 6), dtype=np.float32))
    assert load_poses(tmp_path).shape == (5, 6) and load_poses(tmp_path, frames=5).dtype == np.float32
    with pytest.raises(DatasetError, match="has shape"):
        load_poses(tmp_path, frames=7)


def test_a_real_photo_comes_out_near_frontal(face: CanonicalFace) -> None:
    """skimage's astronaut looks into the camera, her head a little tilted; prepare's framing gives tx, ty ≈ 0 and the
    renderer's default scale."""
    mediapipe = pytest.importorskip("mediapipe")
    photo = pytest.importorskip("skimage.data").astronaut()  # 512×512×3
    with mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        found = mesh.process(photo).multi_face_landmarks
    assert found
    pixels = np.array([(point.x, point.y) for point in found[0].landmark]) * photo.shape[1::-1]  # 478×2 pixels
    centre_x, centre_y, side = crop_box_from_landmarks(pixels[list(MEDIAPIPE_TO_IBUG68)])
    pose = solve_head_pose((pixels - (centre_x - side / 2, centre_y - side / 2)) / side, face=face)
    yaw, pitch, roll = np.degrees(pose[:3])
    assert abs(yaw) < 4 and abs(pitch) < 8 and abs(roll) < 6, (yaw, pitch, roll)
    assert abs(pose[3]) < 0.05 and abs(pose[4]) < 0.05 and abs(pose[5] - DEFAULT_SCALE) < 0.05, pose[3:]
