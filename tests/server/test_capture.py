"""Server-side face crop: the 478 -> 68 mapping, the canonical framing against the renderer, the
box fit and sampling, and auto-crop on a real photograph moved around a webcam-sized canvas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.landmarks import (
    MEDIAPIPE_TO_IBUG68,
    canonical_ibug68,
    crop_box_from_landmarks,
    ibug68_from_mediapipe,
    landmarks_in_crop,
)
from server.capture import CropConfig, CropResult, FaceCropper, NoFaceError
from server.one_euro import OneEuroConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
CANONICAL_IBUG68 = canonical_ibug68()  # 68×2 float32
CANVAS_WIDTH, CANVAS_HEIGHT = 640, 480  # a webcam frame
CROP_SIZE = 128
# The 512² astronaut placed so her face (about 100 px wide, a webcam at arm's length) sits near the
# canvas centre. Much smaller faces (under ~80 px in 640) are missed now and then by mediapipe's
# short-range detector.
BASE_SCALE = 1.0
BASE_OFFSET = (96.0, 128.0)
Pose = tuple[float, tuple[float, float]]  # (scale, (shift x, shift y)) of the photo in the canvas


# --------------------------------------------------------------------------------------------
# Pure numpy parts
# --------------------------------------------------------------------------------------------


def test_ibug68_from_mediapipe_picks_68_points_and_refuses_wrong_shapes() -> None:
    points = np.arange(478 * 3, dtype=np.float64).reshape(478, 3)  # row i holds 3i, 3i+1, 3i+2
    picked = ibug68_from_mediapipe(points)
    assert picked.shape == (68, 2) and picked.dtype == np.float32
    np.testing.assert_array_equal(picked[:, 0], np.array(MEDIAPIPE_TO_IBUG68) * 3)
    np.testing.assert_array_equal(ibug68_from_mediapipe(points[:, :2]), picked)
    np.testing.assert_array_equal(ibug68_from_mediapipe(points[:468]), picked)  # mesh without iris
    assert len(MEDIAPIPE_TO_IBUG68) == 68 and len(set(MEDIAPIPE_TO_IBUG68)) == 68
    assert all(0 <= index < 468 for index in MEDIAPIPE_TO_IBUG68)
    for bad in (np.zeros((68, 2)), np.zeros((478, 4)), np.zeros(478), np.zeros((1, 478, 3)),
                np.zeros((477, 3)), np.full((478, 2), "x")):  # fmt: skip
        with pytest.raises(ValueError, match="478"):
            ibug68_from_mediapipe(bad)


def test_box_fit_recovers_a_scaled_and_shifted_canonical_face() -> None:
    centre_x, centre_y, side = 301.5, 177.25, 143.0
    landmarks = CANONICAL_IBUG68 * side + (centre_x - side / 2, centre_y - side / 2)  # 68×2 px
    box = crop_box_from_landmarks(landmarks)
    np.testing.assert_allclose(box, (centre_x, centre_y, side), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(landmarks_in_crop(landmarks, box), CANONICAL_IBUG68, atol=1e-6)
    with pytest.raises(ValueError, match="degenerate"):
        crop_box_from_landmarks(np.ones((68, 2)))
    with pytest.raises(ValueError, match="68×2"):
        crop_box_from_landmarks(np.ones((67, 2)))


def test_crop_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="output_size"):
        CropConfig(output_size=4)
    with pytest.raises(ValueError, match="padding"):
        CropConfig(output_size=64, padding="mirror")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_faces"):
        CropConfig(output_size=64, max_faces=0)
    with pytest.raises(ValueError, match="confidence"):
        CropConfig(output_size=64, min_detection_confidence=1.5)
    with pytest.raises(ValueError, match="small_face_px"):
        CropConfig(output_size=64, small_face_px=-1.0)


# --------------------------------------------------------------------------------------------
# Canonical framing = the renderer's
# --------------------------------------------------------------------------------------------


def test_canonical_landmarks_match_the_renderer() -> None:
    torch = pytest.importorskip("torch")
    from models.data.heads import SyntheticHeads, neutral_motion, sample_identities

    heads = SyntheticHeads(resolution=256)
    count = 2048  # exactly as the constant's comment says it was made
    identities = sample_identities(count, generator=torch.Generator().manual_seed(0))
    mean = (heads.landmarks(identities, neutral_motion(count)) / 256).mean(0).double().numpy()
    np.testing.assert_allclose(CANONICAL_IBUG68, mean, atol=1e-3)
    # Other identities: the mean is no artefact of one seed, and a rendered neutral head framed by
    # the box fit fills the crop as it filled the renderer's frame.
    identities = sample_identities(16, generator=torch.Generator().manual_seed(7))
    for landmarks in heads.landmarks(identities, neutral_motion(16)).double().numpy():  # 68×2 px
        centre_x, centre_y, side = crop_box_from_landmarks(landmarks)
        assert abs(centre_x - 128) < 0.03 * 256 and abs(centre_y - 128) < 0.03 * 256
        assert abs(side / 256 - 1) < 0.1


# --------------------------------------------------------------------------------------------
# The runtime's import rules
# --------------------------------------------------------------------------------------------


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_capture_imports_neither_torch_nor_models_nor_mediapipe_up_front() -> None:
    result = _run_python(
        "import sys, server.capture\n"
        "assert 'torch' not in sys.modules and 'models' not in sys.modules, 'torch/models imported'\n"
        "assert 'mediapipe' not in sys.modules, 'mediapipe imported before a cropper exists'\n"
    )
    assert result.returncode == 0, result.stderr


def test_missing_mediapipe_is_one_clear_error() -> None:
    result = _run_python(
        "import sys\n"
        "sys.modules['mediapipe'] = None  # what an environment without it looks like to import\n"
        "from server.capture import CaptureUnavailable, CropConfig, FaceCropper\n"
        "try:\n"
        "    FaceCropper(config=CropConfig(output_size=64))\n"
        "except CaptureUnavailable as error:\n"
        "    print(error)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'megalive[capture]'" in result.stdout and result.stdout.count("\n") == 1


# --------------------------------------------------------------------------------------------
# Auto-crop on a real photograph
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    pytest.importorskip("mediapipe")
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()  # 512×512×3 uint8, one frontal face


def place(photo: np.ndarray, *, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """The photo scaled and moved into a grey webcam-sized canvas: canvas = scale·photo + offset."""
    offset_x, offset_y = BASE_OFFSET[0] + shift[0], BASE_OFFSET[1] + shift[1]
    inverse = (1 / scale, 0.0, -offset_x / scale, 0.0, 1 / scale, -offset_y / scale)  # canvas -> photo
    canvas = Image.fromarray(photo).transform(
        (CANVAS_WIDTH, CANVAS_HEIGHT), Image.Transform.AFFINE, inverse,
        resample=Image.Resampling.BILINEAR, fillcolor=(120, 120, 120),
    )  # fmt: skip
    return np.asarray(canvas)


def crop_all(frames: list[np.ndarray], times: np.ndarray, *, box_filter: OneEuroConfig | None) -> list[CropResult]:
    with FaceCropper(config=CropConfig(output_size=CROP_SIZE, box_filter=box_filter)) as cropper:
        return [cropper(frame, float(time)) for frame, time in zip(frames, times, strict=True)]


def test_mapped_mediapipe_points_sit_where_ibug_puts_them(astronaut: np.ndarray) -> None:
    (result,) = crop_all([astronaut], np.zeros(1), box_filter=None)
    x, y = result.landmarks[:, 0], result.landmarks[:, 1]  # crop units, y down
    assert result.face_found and result.landmarks.shape == (68, 2)
    # Jaw left -> chin -> right (a real face is widest at the cheekbones: 0-1 and 15-16 may bulge
    # out by a hair), down to the chin and back up.
    assert np.all(np.diff(x[0:9]) > -0.01) and np.all(np.diff(x[8:17]) > -0.01) and x[0] < x[16]
    assert np.all(np.diff(y[0:9]) > 0) and np.all(np.diff(y[8:17]) < 0)
    assert y[8] == y.max()  # the chin is the lowest point
    assert np.all(np.diff(x[17:27]) > 0)  # brows left -> right
    assert y[17:27].mean() < y[36:48].mean()  # brows above the eyes
    assert x[36] < x[39] < x[42] < x[45]  # eye corners: outer, inner | inner, outer
    assert y[37:39].mean() < y[40:42].mean() and y[43:45].mean() < y[46:48].mean()  # lids
    assert np.all(np.diff(y[27:31]) > 0)  # the nose bridge runs down to the tip
    assert x[39] < x[30] < x[42] and y[30] > y[36:48].max()  # tip between and below the eyes
    assert np.all(np.diff(x[31:36]) > 0)  # nostril base left -> right
    assert x[48] < x[51] < x[54] and min(y[48], y[54]) > y[33]  # mouth corners below the nose
    assert y[51] < y[62] <= y[66] + 1e-6 < y[57]  # lips: outer top, inner top, inner bottom, outer bottom
    # And the face lands where the renderer puts its heads: few hundredths of the crop off.
    error = np.linalg.norm(result.landmarks - CANONICAL_IBUG68, axis=1)  # 68
    assert np.sqrt((error**2).mean()) < 0.04 and error.max() < 0.09


def test_auto_crop_follows_a_moving_face_and_settles(astronaut: np.ndarray) -> None:
    # Hold, move in four small affine steps (a few pixels, slight zoom), hold again; 10 frames/s.
    poses: list[Pose] = [(BASE_SCALE, (0.0, 0.0))] * 6
    poses += [(BASE_SCALE + 0.01 * k, (3.0 * k, -2.0 * k)) for k in range(1, 5)]
    poses += [poses[-1]] * 12
    frames = [place(astronaut, scale=scale, shift=shift) for scale, shift in poses]
    times = np.arange(len(frames)) / 10.0
    raw = crop_all(frames, times, box_filter=None)
    smoothed = crop_all(frames, times, box_filter=OneEuroConfig())
    assert all(result.face_found for result in raw + smoothed)
    for result in smoothed:
        assert result.image.shape == (CROP_SIZE, CROP_SIZE, 3) and result.image.dtype == np.uint8
        assert result.landmarks.shape == (68, 2) and result.landmarks.dtype == np.float32

    def expected_box(reference: CropResult, reference_pose: Pose, pose: Pose) -> np.ndarray:
        """Where the reference box goes when the photo moves from reference_pose to pose."""
        (scale_0, shift_0), (scale_1, shift_1) = reference_pose, pose
        offset_0 = np.add(BASE_OFFSET, shift_0)
        offset_1 = np.add(BASE_OFFSET, shift_1)
        centre_in_photo = (np.array(reference.box[:2]) - offset_0) / scale_0
        centre = centre_in_photo * scale_1 + offset_1
        return np.array([*centre, reference.box[2] * scale_1 / scale_0])

    # Unsmoothed, every frame's box follows the known motion.
    for result, pose in zip(raw, poses, strict=True):
        expected = expected_box(raw[0], poses[0], pose)
        np.testing.assert_allclose(result.box[:2], expected[:2], atol=2.0)
        assert abs(result.box[2] / expected[2] - 1) < 0.04  # the mesh's own scale wobble: ~2 %
    # Smoothed, the box lags while moving, then settles where the face went.
    expected = expected_box(smoothed[5], poses[5], poses[-1])
    np.testing.assert_allclose(smoothed[-1].box[:2], expected[:2], atol=2.0)
    assert abs(smoothed[-1].box[2] / expected[2] - 1) < 0.02
    moved = np.hypot(*(np.array(smoothed[-1].box[:2]) - smoothed[5].box[:2]))
    assert moved > 10  # it did move (12, -8 px plus the zoom around the offset)


def test_box_smoothing_cuts_jitter(astronaut: np.ndarray) -> None:
    shifts = np.random.default_rng(1).uniform(-1.0, 1.0, (24, 2))  # ±1 px noise, no real motion
    frames = [place(astronaut, scale=BASE_SCALE, shift=(dx, dy)) for dx, dy in shifts]
    times = np.arange(len(frames)) / 30.0

    def jitter(results: list[CropResult]) -> float:
        boxes = np.array([result.box for result in results])  # N×3
        return float(np.abs(np.diff(boxes[4:], axis=0)).mean())  # after the filter's first frames

    raw = jitter(crop_all(frames, times, box_filter=None))
    smoothed = jitter(crop_all(frames, times, box_filter=OneEuroConfig()))
    assert raw > 0.05  # the noise did reach the box
    assert smoothed < 0.5 * raw


def test_no_face_reuses_the_last_box_and_never_invents_one(astronaut: np.ndarray) -> None:
    face = place(astronaut, scale=BASE_SCALE, shift=(0.0, 0.0))
    grey = np.full((CANVAS_HEIGHT, CANVAS_WIDTH, 3), 128, dtype=np.uint8)
    with FaceCropper(config=CropConfig(output_size=CROP_SIZE)) as cropper:
        with pytest.raises(NoFaceError):
            cropper(grey, 0.0)  # nothing found yet: nothing to reuse
        good = [cropper(face, t) for t in (0.1, 0.2, 0.3)]
        lost = cropper(grey, 0.4)
        assert all(result.face_found for result in good) and not lost.face_found
        assert lost.box == good[-1].box
        np.testing.assert_array_equal(lost.landmarks, good[-1].landmarks)
        assert lost.image.shape == (CROP_SIZE, CROP_SIZE, 3) and np.all(lost.image == 128)
        found_again = cropper(face, 0.5)
        assert found_again.face_found
        with pytest.raises(ValueError, match="H×W×3 uint8"):
            cropper(face.astype(np.float32), 0.6)
        with pytest.raises(ValueError, match="H×W×3 uint8"):
            cropper(face[:, :, 0], 0.6)
    with pytest.raises(RuntimeError, match="closed"):
        cropper(face, 0.7)


# The face mesh alone misses faces under about 74 px wide (jaw end to jaw end) in 640×480 (bench/auto_crop_floor.py).
SMALL_FACE_WIDTH = 48.0


def test_a_face_below_the_meshs_floor_is_found_by_the_small_face_pass(astronaut: np.ndarray) -> None:
    with FaceCropper(config=CropConfig(output_size=CROP_SIZE, box_filter=None, static_images=True, small_faces=False)) as finder:
        (full_size,) = finder.faces(np.ascontiguousarray(astronaut))  # 68×2 on the 512² photo
    scale = SMALL_FACE_WIDTH / float(np.linalg.norm(full_size[16] - full_size[0]))
    shift = (150.0, -60.0)  # off centre, up and right
    frame = place(astronaut, scale=scale, shift=shift)
    truth = full_size * scale + np.add(BASE_OFFSET, shift)  # where the small face's points are in the frame

    with FaceCropper(config=CropConfig(output_size=CROP_SIZE, box_filter=None, small_faces=False)) as mesh_alone:
        for t in (0.0, 0.1):
            with pytest.raises(NoFaceError):
                mesh_alone(frame, t)
    with FaceCropper(config=CropConfig(output_size=CROP_SIZE, box_filter=None)) as cropper:
        results = [cropper(frame, t) for t in (0.0, 0.1, 0.2)]  # detector, then followed in a cut around the last face
        assert cropper._detector is not None
    assert cropper._detector is None and cropper._cut_mesh is None  # close() freed every graph
    for result in results:
        assert result.face_found and result.found_by == "small-face pass"
        side = result.box[2]
        found = result.landmarks * side + (result.box[0] - side / 2, result.box[1] - side / 2)  # crop units -> frame px
        assert float(np.linalg.norm(found - truth, axis=1).mean()) < 0.05 * SMALL_FACE_WIDTH
        np.testing.assert_allclose(result.box, crop_box_from_landmarks(truth), rtol=0.05, atol=2.0)
    grey = np.full_like(frame, 128)
    with FaceCropper(config=CropConfig(output_size=CROP_SIZE)) as cropper:
        with pytest.raises(NoFaceError):  # the detector invents nothing in an empty frame
            cropper(grey, 0.0)


def test_a_frame_of_another_aspect_is_centre_cut_never_stretched() -> None:
    from server.imaging import fill_rgb, resize_rgb

    wide = np.zeros((90, 160, 3), dtype=np.uint8)
    wide[:, :35], wide[:, 35:125], wide[:, 125:] = 255, (0, 200, 0), 255  # white sides, a green middle 90 wide
    out = fill_rgb(wide, (32, 32))
    assert out.shape == (32, 32, 3) and np.array_equal(out, resize_rgb(wide[:, 35:125], (32, 32)))
    assert (out == (0, 200, 0)).all()  # only the middle square: no side squeezed in
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))  # 160 tall, 90 wide
    assert (fill_rgb(tall, (16, 16)) == (0, 200, 0)).all()
    assert fill_rgb(wide, (9, 16)).shape == (9, 16, 3) and fill_rgb(wide, (90, 160)) is wide  # its own aspect: resized only
