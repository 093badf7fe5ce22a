"""Performance-capture sessions: ARKit curves and landmarks drive the avatars; checks, filters, auto-crop."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from client import protocol
from client.client import AvatarClient, FrameError, ServerError, Texture
from contract.arkit import ARKIT_CURVES
from server import drivers, imaging
from server.engine import Engine
from server.one_euro import OneEuroConfig
from server.service import AvatarService, ServiceConfig
from tests.server.test_service import wait_for


def f32(array: object) -> protocol.RawBuffer:
    return protocol.raw_buffer_from_array(np.ascontiguousarray(array, dtype=np.float32))


def neutral_curves() -> np.ndarray:
    return np.zeros(len(ARKIT_CURVES), np.float32)


def face_landmarks() -> np.ndarray:
    """A plausible 68-point face in crop units: the canonical framing the server's auto-crop targets."""
    from contract.landmarks import canonical_ibug68

    return np.array(canonical_ibug68(), np.float32)


# ------------------------------------------------------------------------------------ checks


def test_arkit_curves_are_checked() -> None:
    curves = neutral_curves()
    curves[ARKIT_CURVES.index("jawOpen")] = 0.7
    np.testing.assert_array_equal(drivers.arkit_curves(f32(curves)), curves)
    named = drivers.arkit_curves(f32([0.7, 0.1]), ["jawOpen", "headYaw"])
    assert named[ARKIT_CURVES.index("jawOpen")] == pytest.approx(0.7) and named[52] == pytest.approx(0.1)
    assert np.count_nonzero(named) == 2
    bad = {
        "NaN": (f32(np.full(61, np.nan)), None, "NaN or infinite"),
        "infinity": (f32(np.r_[np.zeros(60), np.inf]), None, "NaN or infinite"),
        "outside [0, 1]": (f32(np.r_[1.5, np.zeros(60)]), None, "eyeBlinkLeft = 1.5 is outside [0, 1]"),
        "negative": (f32(np.r_[np.zeros(17), -0.2, np.zeros(43)]), None, "jawOpen"),
        "wrong count": (f32(np.zeros(52)), None, "61 curves"),
        "unknown name": (f32([0.5]), ["jawOpenWide"], "unknown ARKit curve names: jawOpenWide"),
        "names of another length": (f32([0.5, 0.2]), ["jawOpen"], "list of 2 strings"),
        "a name twice": (f32([0.5, 0.2]), ["jawOpen", "jawOpen"], "twice"),
        "not float32": (protocol.raw_buffer_from_array(np.zeros(61, np.uint8)), None, "float32"),
        "huge rotation": (f32(np.r_[np.zeros(52), 100.0, np.zeros(8)]), None, "radians"),
    }
    for name, (buffer, names, message) in bad.items():
        with pytest.raises(protocol.ProtocolError, match=re.escape(message)) as caught:
            drivers.arkit_curves(buffer, names, request_id=7)
        assert caught.value.code == "bad_request" and caught.value.request_id == 7, name
    # A hair outside the range (capture apps round) is clamped, not refused.
    assert drivers.arkit_curves(f32(np.r_[1.0005, np.zeros(60)]))[0] == 1.0


def test_landmarks_are_checked_and_mediapipe_points_mapped() -> None:
    from contract.landmarks import MEDIAPIPE_TO_IBUG68

    points = face_landmarks()
    np.testing.assert_array_equal(drivers.landmarks_68(f32(points)), points)
    np.testing.assert_array_equal(drivers.landmarks_68(f32(np.c_[points, np.ones(68)])), points)  # z ignored
    mesh = np.random.default_rng(0).random((478, 3)).astype(np.float32)
    np.testing.assert_allclose(drivers.landmarks_68(f32(mesh)), mesh[list(MEDIAPIPE_TO_IBUG68), :2])
    for buffer, message in (
        (f32(np.zeros((67, 2))), "N×2 or N×3"),
        (f32(np.zeros(136)), "N×2 or N×3"),
        (f32(np.zeros((68, 2))), "all zeros"),
        (f32(np.full((68, 2), 0.5)), "collapsed"),
        (f32(points * 256), "not pixels"),
        (f32(np.where(np.arange(136).reshape(68, 2) == 3, np.nan, points)), "NaN"),
    ):
        with pytest.raises(protocol.ProtocolError, match=re.escape(message)):
            drivers.landmarks_68(buffer)


def test_filter_settings_from_open() -> None:
    defaults = drivers.DEFAULT_FILTERS["arkit"]
    assert drivers.filter_config_from_request(None, kind="arkit") == defaults
    assert drivers.filter_config_from_request(False, kind="arkit") == drivers.NO_FILTERS
    custom = drivers.filter_config_from_request({"pose": {"min_cutoff_hz": 2.0}, "expression": False}, kind="arkit")
    assert custom.pose == OneEuroConfig(min_cutoff_hz=2.0, beta=defaults.pose.beta)
    assert custom.expression is None and custom.box == defaults.box
    assert drivers.filter_config_from_request(None, kind="image").box is not None  # the auto-crop box is steadied
    for field in ({"gaze": {}}, {"pose": {"cutoff": 1}}, {"pose": {"beta": -1.0}}, {"pose": {"beta": "fast"}}, "on"):
        with pytest.raises(protocol.ProtocolError):
            drivers.filter_config_from_request(field, kind="landmarks")


def test_landmark_pose_and_shape_split_and_join_exactly() -> None:
    points = face_landmarks()
    angle = 0.3
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = ((points - 0.5) @ rotation.T * 0.8 + [0.55, 0.45]).astype(np.float32)
    pose, shape = drivers.split_landmarks(moved)
    _, unmoved_shape = drivers.split_landmarks(points)
    np.testing.assert_allclose(shape, unmoved_shape, atol=1e-5)  # the shape channel ignores pose
    assert pose.roll == pytest.approx(drivers.split_landmarks(points)[0].roll + angle, abs=1e-5)
    np.testing.assert_allclose(drivers.join_landmarks(pose, shape), moved, atol=1e-5)


@pytest.mark.parametrize("kind", ["arkit", "landmarks"])
def test_stabiliser_holds_a_constant_signal_and_follows_a_step(kind: str) -> None:
    stabiliser = drivers.SignalStabiliser(kind=kind, config=drivers.DEFAULT_FILTERS[kind])
    if kind == "arkit":
        still, stepped = neutral_curves(), neutral_curves()
        stepped[17] = 1.0  # jawOpen
        stepped[52] = 0.4  # headYaw
    else:
        still = face_landmarks()
        stepped = still + np.float32(0.05)
    for frame in range(30):
        np.testing.assert_allclose(stabiliser(still, frame / 30), still, atol=1e-5)
    outputs = [stabiliser(stepped, (30 + frame) / 30) for frame in range(60)]
    change = [float(np.abs(out - still).max()) for out in outputs]
    assert change[0] > 0 and all(b >= a - 1e-6 for a, b in zip(change, change[1:]))  # moves towards the step, never back
    np.testing.assert_allclose(outputs[-1], stepped, atol=2e-3)  # and gets there
    with pytest.raises(ValueError):
        stabiliser(np.full_like(still, np.nan), 5.0)


# ------------------------------------------------------------------------------------ sessions


@pytest.fixture
def engine(multi_driver_model_path: Path) -> Engine:
    return Engine(model_path=multi_driver_model_path, max_batch=4)


@pytest.fixture
def service(engine: Engine):
    service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*", max_batch=4))
    service.start()
    yield service
    service.stop()


def render(client: AvatarClient, session: int, payload: object, **send: object) -> Texture | FrameError:
    seq = client.send_frame(session, payload, **send)
    events = wait_for(client, (Texture, FrameError))
    return next(e for e in events if isinstance(e, (Texture, FrameError)) and e.seq == seq)


def test_engine_serves_three_driver_kinds(engine: Engine) -> None:
    assert engine.drivers == ("image", "arkit", "landmarks")
    avatars = np.array([0, 2], np.int64)
    assert engine.run(np.random.rand(2, 61).astype(np.float32), avatars, kind="arkit").rgb.shape == (2, 3, 64, 64)
    assert engine.run(np.random.rand(2, 68, 2).astype(np.float32), avatars, kind="landmarks").alpha.shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="61"):
        engine.run(np.zeros((1, 60), np.float32), avatars[:1], kind="arkit")


@pytest.mark.parametrize("kind", ["arkit", "landmarks"])
def test_a_capture_session_renders_what_the_engine_renders(kind: str, service: AvatarService, engine: Engine) -> None:
    signal = neutral_curves() if kind == "arkit" else face_landmarks()
    if kind == "arkit":
        signal[ARKIT_CURVES.index("mouthSmileLeft")] = 0.8
    with AvatarClient(address=service.bound_address) as client:
        assert kind in client.hello().capabilities["drivers"]
        session = client.open(avatar=1, driver=kind, stabilise=False)
        texture = render(client, session, signal)
        assert isinstance(texture, Texture)
        expected = engine.run(signal[None], np.array([1]), kind=kind)
        np.testing.assert_array_equal(texture.buffer.array(), imaging.to_texture_pixels(expected.rgb, expected.alpha)[0])


def test_bad_capture_frames_get_error_replies_and_the_session_stays_usable(service: AvatarService) -> None:
    with AvatarClient(address=service.bound_address) as client:
        arkit = client.open(avatar=0, driver="arkit")
        landmarks = client.open(avatar=0, driver="landmarks")
        for session, payload, names, message in (
            (arkit, np.full(61, np.nan, np.float32), None, "NaN"),
            (arkit, np.r_[2.0, np.zeros(60)].astype(np.float32), None, "outside [0, 1]"),
            (arkit, np.zeros(50, np.float32), None, "61 curves"),
            (arkit, np.zeros(1, np.float32), ["smile"], "unknown ARKit curve names"),
            (landmarks, np.zeros((68, 2), np.float32), None, "all zeros"),
            (landmarks, np.zeros((10, 2), np.float32), None, "N×2 or N×3"),
        ):
            error = render(client, session, payload, names=names)
            assert isinstance(error, FrameError) and error.code == "bad_request" and message in error.message, (message, error)
        assert isinstance(render(client, arkit, neutral_curves()), Texture)
        assert isinstance(render(client, landmarks, face_landmarks()), Texture)
        assert isinstance(render(client, arkit, np.array([0.4], np.float32), names=["jawOpen"]), Texture)
        stats = {s["session"]: s for s in client.stats()["sessions"]}
        assert sum(s["errors"] for s in stats.values()) == 6


def test_open_refuses_kinds_and_options_that_do_not_fit(service: AvatarService, contract_model_path: Path) -> None:
    with AvatarClient(address=service.bound_address) as client:
        for fields, message in (
            ({"driver": "arkit", "crop": "auto"}, "crop 'auto' is for image drivers"),
            ({"driver": "image", "landmarks": True}, "needs crop 'auto'"),
            ({"driver": "arkit", "stabilise": {"pose": {"beta": -2}}}, "beta"),
        ):
            with pytest.raises(ServerError, match=message):
                client.open(avatar=0, **fields)
    image_only = Engine(model_path=contract_model_path)
    other = AvatarService(engine=image_only, config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    other.start()
    try:
        with AvatarClient(address=other.bound_address) as client:
            with pytest.raises(ServerError, match="no 'landmarks' input"):
                client.open(avatar=0, driver="landmarks")
    finally:
        other.stop()


def test_a_filtered_session_is_steadier_than_an_unfiltered_one(service: AvatarService) -> None:
    """The same noisy held pose through two sessions: the filtered textures change less frame to frame."""
    rng = np.random.default_rng(0)
    base = face_landmarks()
    jitter = {}
    with AvatarClient(address=service.bound_address) as client:
        for name, stabilise in (("raw", False), ("filtered", None)):
            session = client.open(avatar=0, driver="landmarks", stabilise=stabilise)
            textures = []
            for frame in range(12):
                noisy = (base + rng.normal(0, 0.004, base.shape)).astype(np.float32)
                texture = render(client, session, noisy, timestamp=frame / 30)
                textures.append(texture.buffer.array().astype(np.float32))
            jitter[name] = np.mean([np.abs(b - a).mean() for a, b in zip(textures[1:], textures[2:])])
    assert jitter["filtered"] < 0.5 * jitter["raw"], jitter


# ------------------------------------------------------------------------------------ auto-crop


def webcam_frame(shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """scikit-image's astronaut photograph placed in a grey 640×480 frame (a real face, not a render)."""
    from skimage.data import astronaut

    frame = np.full((480, 640, 3), 128, np.uint8)
    photo = astronaut()[:400, 60:460]  # 400×400, her face in the upper middle
    top, left = 40 + shift[1], 120 + shift[0]
    frame[top : top + 400, left : left + 400] = photo
    return frame


def test_auto_crop_finds_the_face_returns_landmarks_and_reuses_the_last_box(service: AvatarService) -> None:
    with AvatarClient(address=service.bound_address) as client:
        assert "auto" in client.hello().capabilities["crops"]
        session = client.open(avatar=0, crop="auto", landmarks=True)
        grey = np.full((480, 640, 3), 128, np.uint8)
        first = render(client, session, grey, timestamp=0.0)
        assert isinstance(first, FrameError) and "no face" in first.message  # nothing to reuse yet
        found = [render(client, session, webcam_frame((dx, 0)), timestamp=(1 + i) / 30) for i, dx in enumerate((0, 2, 4))]
        for texture in found:
            assert isinstance(texture, Texture) and texture.face_found is True and texture.buffer.array().shape == (64, 64, 4)
            points = np.array(texture.landmarks)
            assert points.shape == (68, 2) and 0 < points.min() and points.max() < 1
            assert points[36, 0] < points[45, 0] and points[8, 1] > points[30, 1]  # eyes left to right, chin under the nose
        lost = render(client, session, grey, timestamp=0.2)
        assert isinstance(lost, Texture) and lost.face_found is False  # flagged, and the session goes on
        assert isinstance(render(client, session, webcam_frame(), timestamp=0.3), Texture)


def test_a_nonsense_client_stamp_does_not_reach_the_filters(service: AvatarService, engine: Engine) -> None:
    """The filters run on the client's capture time; a NaN or infinite stamp falls back to arrival time."""
    curves = neutral_curves()
    with AvatarClient(address=service.bound_address) as client:
        session = client.open(avatar=0, driver="arkit")
        for stamp in (math.nan, math.inf, 1.0):
            texture = render(client, session, curves, timestamp=stamp)
            assert isinstance(texture, Texture)
    # A constant signal filters to itself; a NaN stamp inside the filter would have made it NaN for good.
    expected = engine.run(curves[None], np.array([0]), kind="arkit")
    np.testing.assert_array_equal(texture.buffer.array(), imaging.to_texture_pixels(expected.rgb, expected.alpha)[0])
