"""Head poses of real faces, solved from mediapipe's face mesh: the labels the frozen head-pose network
(models/megaportraits/head_pose.py, DESIGN.md §4.1) learns from prepared real video beside SyntheticHeads' exact ones.

The model. mediapipe's face geometry pipeline ships a canonical face mesh (468 vertices in cm; x right, y up, z out of
the face towards the camera) and a Procrustes basis: 33 vertices it fits the pose on, with weights, leaving out brows,
lids and lips, which move with expression. Six of the 33 move too, with a smile (the cheeks) or an open mouth (the
lower jaw); on skimage's astronaut, who smiles, they tilt the fit 7.5° downwards. They are left out here
(EXPRESSION_VERTICES), so that talking does not read as nodding: 27 vertices remain, on the eyes' corners, the nose,
the cheekbones under the eyes, the temples and the forehead. The metadata file comes from the npm package
@mediapipe/face_mesh (``make nets`` cuts it out of the package's packed assets; models/nets/weights.py pins its
sha256). It is parsed here by hand: the protobuf wire format is three small messages deep, and our own reader keeps
mediapipe (900 modules, OpenCV) out of any process that only needs the mesh. The tests check it against mediapipe's
generated parser.

The fit. A face filling a crop is filmed from half a metre or more, where weak perspective (orthographic projection
and one scale) is close, and it is what the renderer draws and the pose labels mean. Minimised is the weighted 2-D
error Σᵢ wᵢ |s·(R mᵢ)_xy + t − pᵢ|² over those 27 vertices: x and y only, because they are what the image shows, while
mediapipe's z is its network's guess. It starts from the closed-form affine fit (the 2×3 map's nearest scaled
row-orthonormal matrix, by SVD; exact for noise-free points) and is refined by Gauss-Newton on rotation, scale and
translation, vectorised over frames.

The convention is the renderer's (head_pose.py): the crop spans [-1, 1], x right, y up; R = Rz(roll)·Ry(yaw)·Rx(-pitch)
(standard rotation matrices) maps head to camera; a head point p lands at s·R·p + (tx, ty); s is the skull
half-height in image half-heights. mediapipe's canonical axes are the renderer's head axes (x towards the subject's
left, which is image right on a frontal face; y up; z out of the face), and its face looks along +z as the renderer's
does at pitch 0 (tests: the best pitch between the two 2-D layouts is within 2°), so the rotation needs no change of
axes. The units and the origin differ: head = HEAD_UNITS_PER_CM · mesh + CANONICAL_ORIGIN (see there).

numpy and the standard library only, so that `megalive-train prepare`'s workers stay free of torch (load_poses, for
the readers, raises their DatasetError and imports it when called).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.nets.weights import net_file

GEOMETRY_FILE = "face-geometry-metadata"  # its key in models/nets/weights.py FILES
MESH_VERTICES = 468  # the canonical mesh; the face mesh's 478 points add 10 iris points after these
MESH_POINT_COUNTS = (468, 478)
# The pose's six numbers, in the head-pose network's LABEL_NAMES order (head_pose.py imports torch, so the names are
# repeated here; the tests check they agree).
POSE_NAMES = ("yaw", "pitch", "roll", "tx", "ty", "scale")
FIT_CHUNK = 4096  # frames fitted at once

# The canonical mesh in the renderer's head units: head = HEAD_UNITS_PER_CM · mesh + CANONICAL_ORIGIN. Made offline by
# ``calibrate`` (tests/models/test_face_pose.py recomputes both): the 68 iBUG landmarks of the mean SyntheticHeads
# identity (every field of sample_identities(4096, seed 0) averaged; neutral motion) in head space (head_landmarks,
# with surface_z for depth) against the 68 canonical-mesh vertices contract.landmarks.MEDIAPIPE_TO_IBUG68 picks. The
# scale is the ratio of the two point sets' RMS spreads in x and y (the face's size as the image shows it); the origin
# moves the mesh's 68-point centroid onto theirs in x, y and z, so (tx, ty) is where the renderer's head centre lands.
# Rounded to 4 digits. A frontal mesh, centred at the default scale, then lands its 68 points on the synthetic heads'
# mean ones (contract.landmarks.CANONICAL_IBUG68_POINTS) 0.016 of the crop's side away on average: real crops framed by
# `megalive-train prepare` come out near tx = ty = 0, scale = 0.68, as the renderer's default heads do.
HEAD_UNITS_PER_CM = 0.0916
CANONICAL_ORIGIN = (0.0, -0.0986, 0.2838)


# Vertices of the geometry pipeline's Procrustes basis that move with expression, left out of the fit (module
# docstring): 205/425 and 147/376 on the cheeks (raised by a smile), 136/365 on the lower jaw (dropped with the mouth).
EXPRESSION_VERTICES = (136, 147, 205, 365, 376, 425)


class FaceGeometryError(ValueError):
    """The geometry metadata file cannot be read as a canonical face mesh (one line naming the file)."""


@dataclass(frozen=True, eq=False)
class CanonicalFace:
    """mediapipe's canonical face mesh and its Procrustes landmark basis (arrays read-only)."""

    vertices: np.ndarray  # 468×3 float64, cm: x right, y up, z out of the face
    basis: np.ndarray  # K int64: the geometry pipeline's Procrustes basis (fitted() leaves out EXPRESSION_VERTICES)
    weights: np.ndarray  # K float64, summing to 1

    def head_points(self) -> np.ndarray:
        """The 468 vertices in the renderer's head units and origin (468×3 float64)."""
        return self.vertices * HEAD_UNITS_PER_CM + np.array(CANONICAL_ORIGIN)

    def fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """The vertices the pose is fitted on and their weights (summing to 1): the basis less EXPRESSION_VERTICES."""
        keep = ~np.isin(self.basis, EXPRESSION_VERTICES)
        return self.basis[keep], self.weights[keep] / self.weights[keep].sum()


# -- reading the metadata file ------------------------------------------------------------------------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of one protobuf message: ints for varints, bytes otherwise."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, at = _varint(data, at)
            yield number, wire_type, value
            continue
        if wire_type == 2:
            size, at = _varint(data, at)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if at + size > len(data):
            raise ValueError("truncated field")
        yield number, wire_type, data[at : at + size]
        at += size


def parse_geometry_metadata(data: bytes, *, source: str = "geometry metadata") -> CanonicalFace:
    """A CanonicalFace from mediapipe's GeometryPipelineMetadata message (geometry_pipeline_metadata.proto:
    canonical_mesh = 1 (Mesh3d: vertex_type = 1, vertex_buffer = 3, repeated float, packed or not),
    procrustes_landmark_basis = 2 (repeated WeightedLandmarkRef: landmark_id = 1, weight = 2)). FaceGeometryError
    (naming ``source``) when it is not one."""
    vertex_floats: list[float] = []
    vertex_type = 0
    basis: list[tuple[int, float]] = []
    try:
        for number, _, value in _fields(data):
            if number == 1 and isinstance(value, bytes):  # canonical_mesh
                for mesh_number, mesh_wire, mesh_value in _fields(value):
                    if mesh_number == 1 and isinstance(mesh_value, int):
                        vertex_type = mesh_value
                    elif mesh_number == 3 and isinstance(mesh_value, bytes):
                        if mesh_wire == 2 and len(mesh_value) % 4:
                            raise ValueError("a packed vertex buffer of a size that is no multiple of 4")
                        vertex_floats += struct.unpack(f"<{len(mesh_value) // 4}f", mesh_value)  # packed or one fixed32
            elif number == 2 and isinstance(value, bytes):  # procrustes_landmark_basis
                landmark, weight = -1, 0.0
                for ref_number, ref_wire, ref_value in _fields(value):
                    if ref_number == 1 and isinstance(ref_value, int):
                        landmark = ref_value
                    elif ref_number == 2 and ref_wire == 5 and isinstance(ref_value, bytes):
                        (weight,) = struct.unpack("<f", ref_value)
                basis.append((landmark, weight))
    except (ValueError, struct.error) as error:
        raise FaceGeometryError(f"{source} is not a mediapipe geometry pipeline metadata file: {error}") from None
    if vertex_type != 0 or len(vertex_floats) != MESH_VERTICES * 5:  # VERTEX_PT: x, y, z, u, v per vertex
        raise FaceGeometryError(
            f"{source}: expected a canonical mesh of {MESH_VERTICES} position+texture vertices, "
            f"got vertex type {vertex_type} and {len(vertex_floats)} floats"
        )
    indices = np.array([landmark for landmark, _ in basis], dtype=np.int64)
    weights = np.array([weight for _, weight in basis], dtype=np.float64)
    if indices.size < 4 or indices.min() < 0 or indices.max() >= MESH_VERTICES or not (weights > 0).all():
        raise FaceGeometryError(f"{source}: its Procrustes landmark basis ({indices.size} entries) is empty or out of range")
    vertices = np.array(vertex_floats, dtype=np.float64).reshape(MESH_VERTICES, 5)[:, :3]  # 2340 -> 468×5 -> 468×3
    weights = weights / weights.sum()
    for array in (vertices, indices, weights):
        array.flags.writeable = False
    return CanonicalFace(vertices=vertices, basis=indices, weights=weights)


@functools.cache
def _read(path: str) -> CanonicalFace:
    return parse_geometry_metadata(Path(path).read_bytes(), source=path)


def canonical_face(*, folder: Path | None = None) -> CanonicalFace:
    """The canonical face from the nets folder (models/nets/weights.py; ``folder`` overrides it). NetWeightsError,
    one line naming the file and `make nets`, when the file is missing or not the pinned one."""
    return _read(str(net_file(GEOMETRY_FILE, folder=folder)))


# -- calibration against SyntheticHeads ----------------------------------------------------------------------------


def calibrate(head_landmarks: np.ndarray, face: CanonicalFace) -> tuple[float, tuple[float, float, float]]:
    """(HEAD_UNITS_PER_CM, CANONICAL_ORIGIN) from a neutral head's 68 iBUG landmarks in head space (68×3 head units)
    and the canonical mesh's 68 (MEDIAPIPE_TO_IBUG68): the RMS spread ratio in x and y, then the centroid shift."""
    from contract.landmarks import MEDIAPIPE_TO_IBUG68

    head = np.asarray(head_landmarks, dtype=np.float64)
    if head.shape != (68, 3):
        raise ValueError(f"head landmarks must be 68×3, got {head.shape}")
    mesh = face.vertices[list(MEDIAPIPE_TO_IBUG68)]  # 468×3 -> 68×3, cm

    def spread(points: np.ndarray) -> float:  # 68×2 -> RMS distance from the centroid
        return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))

    scale = spread(head[:, :2]) / spread(mesh[:, :2])
    origin = head.mean(axis=0) - scale * mesh.mean(axis=0)
    origin[0] = 0.0  # both are symmetric about x = 0; keep rounding noise out
    return scale, (float(origin[0]), float(origin[1]), float(origin[2]))


# -- the pose -----------------------------------------------------------------------------------------------------


def rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """N×3 (yaw, pitch, roll) -> N×3×3 R = Rz(roll)·Ry(yaw)·Rx(-pitch), the renderer's head-to-camera rotation."""
    yaw, pitch, roll = np.moveaxis(np.asarray(angles, dtype=np.float64), -1, 0)
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    rx = np.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], axis=-1).reshape(*yaw.shape, 3, 3)  # Rx(-pitch)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], axis=-1).reshape(*yaw.shape, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], axis=-1).reshape(*yaw.shape, 3, 3)
    return rz @ ry @ rx


def euler_angles(rotation: np.ndarray) -> np.ndarray:
    """N×3×3 rotations -> N×3 (yaw, pitch, roll) with R = Rz(roll)·Ry(yaw)·Rx(-pitch), yaw in [-π/2, π/2]."""
    yaw = np.arcsin(np.clip(-rotation[..., 2, 0], -1.0, 1.0))
    pitch = -np.arctan2(rotation[..., 2, 1], rotation[..., 2, 2])
    roll = np.arctan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return np.stack([yaw, pitch, roll], axis=-1)


def project_canonical(poses: np.ndarray, *, face: CanonicalFace) -> np.ndarray:
    """Where the canonical mesh lands over a crop in these poses (N×6, POSE_NAMES order): N×468×3 as mediapipe reports
    points over a square image: x right and y down in [0, 1] over the crop, z in the same units, smaller nearer."""
    poses = np.asarray(poses, dtype=np.float64)
    camera = np.einsum("nij,kj->nki", rotation_matrices(poses[:, :3]), face.head_points())  # N×468×3, R·p
    camera = camera * poses[:, None, 5:6]  # s·R·p
    x, y = camera[..., 0] + poses[:, None, 3], camera[..., 1] + poses[:, None, 4]  # N×468 each, image units, y up
    return np.stack([(x + 1) / 2, (1 - y) / 2, -camera[..., 2] / 2], axis=-1)  # N×468×3


def _rodrigues(omega: np.ndarray) -> np.ndarray:
    """N×3 rotation vectors -> N×3×3 rotations (exp of the skew matrix)."""
    angle = np.linalg.norm(omega, axis=-1)[:, None, None]  # N×1×1
    x, y, z = omega.T
    zero = np.zeros_like(x)
    skew = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(-1, 3, 3)  # N×3×3
    small = angle < 1e-8
    safe = np.where(small, 1.0, angle)
    a = np.where(small, 1.0, np.sin(safe) / safe)
    b = np.where(small, 0.5, (1 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * skew + b * (skew @ skew)


def solve_head_pose(points: np.ndarray, *, face: CanonicalFace | None = None, iterations: int = 10) -> np.ndarray:
    """Head poses of faces from their face-mesh points (module docstring).

    points: N×P×C or P×C with P = 468 or 478 (mediapipe's face mesh, iris points ignored) and C = 2 or 3 (z ignored),
    x right and y down in units that span [0, 1] over a square crop (the crop's pixels / its side; mediapipe's own
    normalised output qualifies for a square image only). Returns N×6 (or 6) float64 in POSE_NAMES order: yaw, pitch,
    roll in radians, tx, ty, scale in the renderer's convention over that crop. Frames are solved independently.
    ``face``: the canonical face (default: canonical_face(), from the nets folder)."""
    points = np.asarray(points, dtype=np.float64)
    single = points.ndim == 2
    batch = points[None] if single else points  # -> N×P×C
    if batch.ndim != 3 or batch.shape[1] not in MESH_POINT_COUNTS or batch.shape[2] not in (2, 3):
        raise ValueError(f"face-mesh points must be N×468×{{2,3}} or N×478×{{2,3}} (or one face without N), got {points.shape}")
    if not np.isfinite(batch[:, :MESH_VERTICES, :2]).all():
        raise ValueError("face-mesh points hold NaN or infinite values")
    face = canonical_face() if face is None else face
    vertices, weights = face.fitted()  # K each
    model = face.head_points()[vertices]  # 468×3 -> K×3, head units
    observed = batch[:, vertices, :2]  # N×P×C -> N×K×2, crop units, y down
    target = np.stack([2 * observed[..., 0] - 1, 1 - 2 * observed[..., 1]], axis=-1)  # N×K×2, image units, y up
    # In chunks: the fit's Jacobians take about 3 KB a frame, and an hour of video has 90 000 frames.
    chunks = [
        _fit(target[start : start + FIT_CHUNK], model=model, weights=weights, iterations=iterations)
        for start in range(0, len(target), FIT_CHUNK)
    ]
    poses = np.concatenate(chunks) if chunks else np.zeros((0, len(POSE_NAMES)))  # N×6
    return poses[0] if single else poses


def _fit(target: np.ndarray, *, model: np.ndarray, weights: np.ndarray, iterations: int) -> np.ndarray:
    """N×K×2 points (image units, y up) -> N×6 poses of the K×3 model (module docstring: the fit)."""
    # Start: the weighted least-squares affine map A (2×3) from the centred model to the centred points, whose nearest
    # scaled row-orthonormal matrix gives R's first two rows and the scale.
    model_mean, target_mean = weights @ model, np.einsum("k,nkd->nd", weights, target)  # 3, N×2
    model_centred, target_centred = model - model_mean, target - target_mean[:, None]
    cross = np.einsum("k,nkd,ke->nde", weights, target_centred, model_centred)  # N×2×3
    gram = np.einsum("k,kd,ke->de", weights, model_centred, model_centred)  # 3×3
    u, singular, vt = np.linalg.svd(cross @ np.linalg.inv(gram), full_matrices=False)  # N×2×2, N×2, N×2×3
    rows = u @ vt  # N×2×3
    rotation = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], axis=1)  # N×3×3
    scale = singular.mean(axis=1)  # N
    shift = target_mean - scale[:, None] * (rotation @ model_mean)[:, :2]  # N×2

    # Refine: Gauss-Newton on the 2-D error; the rotation is updated as R ← exp([ω]×)·R, so q = R·m moves by ω × q.
    for _ in range(iterations):
        q = np.einsum("nij,kj->nki", rotation, model)  # N×K×3
        residual = scale[:, None, None] * q[..., :2] + shift[:, None] - target  # N×K×2
        s = scale[:, None]
        zero, one = np.zeros_like(q[..., 0]), np.ones_like(q[..., 0])
        d_x = np.stack([zero, s * q[..., 2], -s * q[..., 1], q[..., 0], one, zero], axis=-1)  # N×K×6: ∂x/∂(ω, s, t)
        d_y = np.stack([-s * q[..., 2], zero, s * q[..., 0], q[..., 1], zero, one], axis=-1)  # N×K×6: ∂y/∂(ω, s, t)
        jacobian = np.stack([d_x, d_y], axis=2)  # N×K×2×6
        normal = np.einsum("k,nkri,nkrj->nij", weights, jacobian, jacobian)  # N×6×6
        gradient = np.einsum("k,nkri,nkr->ni", weights, jacobian, residual)  # N×6
        step = -np.linalg.solve(normal + 1e-12 * np.eye(6), gradient[..., None])[..., 0]  # N×6
        rotation = _rodrigues(step[:, :3]) @ rotation
        scale, shift = scale + step[:, 3], shift + step[:, 4:]
    return np.concatenate([euler_angles(rotation), shift, scale[:, None]], axis=1)  # N×6


# -- reading them back --------------------------------------------------------------------------------------------

POSES_FILE = "poses.npy"  # per prepared video: N×6 float32, POSE_NAMES order (models/data/prepare.py)


def load_poses(video_dir: str | Path, *, frames: int | None = None) -> np.ndarray:
    """A prepared video's solved head poses (N×6 float32, memory-mapped, POSE_NAMES order) from its folder
    (<prepared>/videos/<name>); ``frames``: the count meta.json lists, checked when given. DatasetError (one line) when
    the folder predates pose solving or the file is damaged."""
    from models.data.paired import DatasetError, load_checked_array  # the readers' error; paired.py needs torch

    path = Path(video_dir) / POSES_FILE
    if not path.is_file():
        raise DatasetError(
            f"{Path(video_dir)} has no solved head poses ({POSES_FILE}): it was prepared before poses were solved; "
            "run `megalive-train prepare` again"
        )
    if frames is None:
        try:
            frames = int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        except (OSError, ValueError, IndexError) as error:
            raise DatasetError(f"{path} is corrupt or truncated: {error}") from None
    return load_checked_array(path, shape=(frames, len(POSE_NAMES)), dtype=np.float32)
