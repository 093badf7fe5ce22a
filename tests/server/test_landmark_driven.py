"""Landmark-driven models (the few-shot talking heads, DESIGN §4.4) served: the engine draws each frame's 68 points
as the landmark image the main graph takes (contract/landmark_image.py), the arkit graph gives points that are drawn
the same way, image sessions need crop "auto" (the face mesh's points drive the model), and `retarget` sessions move
the driver's points onto the avatar's neutral face."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from client import protocol
from client.client import AvatarClient, FrameError, ServerError, Texture
from contract.arkit import ARKIT_CURVES
from contract.landmark_image import draw_landmark_image, retarget_landmarks
from contract.landmarks import canonical_ibug68
from server import imaging
from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from tests.server.test_engine_and_layout import run_cli
from tests.server.test_service import raw_dealer, wait_for

SIZE = 64
IMAGE_REFUSAL = "this model is driven by landmarks: open the image driver with crop 'auto'"


@pytest.fixture(scope="session")
def landmark_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64×64 one-person few-shot model with random weights, exported as models/fewshot/export_personal.py exports a
    fine-tuned person: the generator over landmark images, and the ARKit graph (curves -> the puppet's landmarks
    retargeted onto the person's neutral face). Tests what the server does with such a model, not looks."""
    import torch

    from models.export import ExtraDriver, export_avatar_model
    from models.fewshot.config import fewshot_config
    from models.fewshot.generator import FewShotGenerator
    from models.fewshot.personal import PersonalGenerator, PuppetLandmarks

    torch.manual_seed(0)
    generator = FewShotGenerator(config=fewshot_config("tiny"))
    adain = 0.1 * torch.randn(1, sum(generator.adain_sizes))
    neutral = torch.from_numpy(np.array(canonical_ibug68(), np.float32))[None]  # 1×68×2 in [0, 1]
    arkit = ExtraDriver(
        kind="arkit",
        module=PuppetLandmarks(neutral_landmarks=neutral),
        input_name="curves",
        input_shape=(len(ARKIT_CURVES),),
        config={},
        outputs=("landmarks",),
    )
    out = tmp_path_factory.mktemp("models") / "person.onnx"
    report = export_avatar_model(
        PersonalGenerator(generator=generator, adain=adain),
        out_path=out,
        resolution=(SIZE, SIZE),
        avatar_names=["person"],
        command="tests/server/test_landmark_driven.py landmark_model_path",
        config={},
        extra_drivers=[arkit],
        thumbnails=np.zeros((1, 96, 96, 3), np.uint8),
        driver_input={"kind": "landmark_image", "line_thickness": 1.5, "neutral_landmarks": neutral.tolist()},
    )
    assert report.max_abs_error < 1e-4
    return out


@pytest.fixture
def engine(landmark_model_path: Path) -> Engine:
    return Engine(model_path=landmark_model_path, max_batch=4)


@pytest.fixture
def service(engine: Engine) -> Iterator[AvatarService]:
    service = AvatarService(engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*", max_batch=4, watermark=False))
    service.start()
    yield service
    service.stop()


def neutral_face() -> np.ndarray:
    return np.array(canonical_ibug68(), np.float32)


def stretched(points: np.ndarray, factor: float = 1.3) -> np.ndarray:
    """Another face shape: wider about its centre (a driver whose face is not the avatar's)."""
    centre = points.mean(axis=0)
    return ((points - centre) * np.array([factor, 1.0]) + centre).astype(np.float32)


def mouth_open(points: np.ndarray, by: float = 0.04) -> np.ndarray:
    moved = points.copy()
    moved[57:60, 1] += by  # the lower outer lip
    moved[65:68, 1] += by  # the lower inner lip
    moved[6:11, 1] += by / 2  # the chin follows
    return moved


def texture_of(engine: Engine, points: np.ndarray) -> np.ndarray:
    output = engine.run(np.asarray(points, np.float32)[None], np.zeros(1, np.int64), kind="landmarks")
    return imaging.to_texture_pixels(output.rgb, output.alpha)[0]


def render(client: AvatarClient, session: int, payload: object, **send: object) -> Texture | FrameError:
    seq = client.send_frame(session, payload, **send)
    events = wait_for(client, (Texture, FrameError))
    return next(e for e in events if isinstance(e, (Texture, FrameError)) and e.seq == seq)


class RawSession:
    """A session opened with fields AvatarClient.open does not send (``retarget``), over a plain DEALER."""

    def __init__(self, address: str, **fields: object) -> None:
        self.socket = raw_dealer(address)
        self.reply = self.request({"op": "open", **fields})
        self.seq = 0

    def request(self, header: dict, buffers: tuple[protocol.Buffer, ...] = ()) -> protocol.Message:
        self.socket.send_multipart(protocol.encode({"id": 1, **header}, buffers))
        assert self.socket.poll(30_000), f"no reply to {header['op']}"
        return protocol.decode(self.socket.recv_multipart())

    def frame(self, payload: np.ndarray) -> protocol.Message:
        self.seq += 1
        header = {"op": "frame", "session": self.reply.header["session"], "token": self.reply.header["token"], "seq": self.seq}
        return self.request(header, (protocol.raw_buffer_from_array(payload),))

    def pixels(self, payload: np.ndarray) -> np.ndarray:
        reply = self.frame(payload)
        assert reply.op == "texture", reply.header
        buffer = reply.buffers[0]
        assert isinstance(buffer, protocol.RawBuffer)
        return buffer.array()

    def close(self) -> None:
        self.socket.close(linger=0)


# ------------------------------------------------------------------------------------ engine


def test_engine_runs_landmarks_and_arkit_and_refuses_pictures(engine: Engine) -> None:
    assert engine.landmark_driven and engine.drivers == ("image", "landmarks", "arkit")
    assert engine.neutral_landmarks is not None and engine.neutral_landmarks.shape == (1, 68, 2)
    np.testing.assert_allclose(engine.neutral_landmarks[0], neutral_face(), atol=1e-6)
    faces = np.stack([neutral_face(), mouth_open(neutral_face()), stretched(neutral_face()), neutral_face(), neutral_face()])
    output = engine.run(faces, np.zeros(5, np.int64), kind="landmarks")  # 5 > max_batch 4: two chunks
    assert output.rgb.shape == (5, 3, SIZE, SIZE) and output.alpha.shape == (5, 1, SIZE, SIZE)
    curves = np.zeros((2, len(ARKIT_CURVES)), np.float32)
    curves[1, ARKIT_CURVES.index("jawOpen")] = 0.8
    output = engine.run(curves, np.zeros(2, np.int64), kind="arkit")
    assert output.rgb.shape == (2, 3, SIZE, SIZE) and output.alpha.shape == (2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="driven by landmarks"):
        engine.run(np.zeros((1, 3, SIZE, SIZE), np.float32), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="do not match"):
        engine.run(np.zeros((1, 61, 2), np.float32), np.zeros(1, np.int64), kind="landmarks")


def test_lanes_draw_and_run_a_landmark_driven_models_frames_as_one_session_does(landmark_model_path: Path) -> None:
    split = Engine(model_path=landmark_model_path, max_batch=4, intra_op_threads=2, lanes=2)
    whole = Engine(model_path=landmark_model_path, max_batch=4, intra_op_threads=2, lanes=1)
    assert split.lane_layout.lanes == 2
    generator = np.random.default_rng(1)
    points = np.asarray(canonical_ibug68(), np.float32) + generator.normal(0, 0.01, (3, 68, 2)).astype(np.float32)
    avatars = np.zeros(3, np.int64)
    np.testing.assert_allclose(
        split.run(points, avatars, kind="landmarks").rgb, whole.run(points, avatars, kind="landmarks").rgb, atol=1e-5
    )
    curves = generator.random((3, len(ARKIT_CURVES)), dtype=np.float32)
    np.testing.assert_allclose(split.run(curves, avatars, kind="arkit").rgb, whole.run(curves, avatars, kind="arkit").rgb, atol=1e-5)


def test_the_engine_runs_the_main_graph_on_the_drawn_landmark_image(engine: Engine, landmark_model_path: Path) -> None:
    """What the engine renders for 68 points is the main graph on contract/landmark_image.py's drawing of them; the
    arkit path is the same drawing of the arkit graph's points."""
    assert engine.card.landmark_input is not None
    thickness = engine.card.landmark_input.line_thickness
    main = ort.InferenceSession(str(landmark_model_path), providers=["CPUExecutionProvider"])
    avatar = np.zeros(1, np.int64)

    def main_graph_on(points: np.ndarray) -> list[np.ndarray]:
        drawn = draw_landmark_image(points * SIZE, size=SIZE, thickness=thickness).transpose(2, 0, 1)[None]
        return main.run(["rgb", "alpha"], {"driver": np.ascontiguousarray(drawn), "avatar": avatar})

    face = mouth_open(neutral_face())
    output = engine.run(face[None], avatar, kind="landmarks")
    rgb, alpha = main_graph_on(face)
    np.testing.assert_allclose(output.rgb, rgb, atol=1e-5)
    np.testing.assert_allclose(output.alpha, alpha, atol=1e-5)
    other = engine.run(stretched(face)[None], avatar, kind="landmarks")
    assert np.abs(other.rgb - output.rgb).max() > 1e-3  # the points reach the picture

    curves = np.zeros((1, len(ARKIT_CURVES)), np.float32)
    curves[0, ARKIT_CURVES.index("jawOpen")] = 0.6
    points_graph = ort.InferenceSession(str(landmark_model_path.with_name("person.arkit.onnx")), providers=["CPUExecutionProvider"])
    (points,) = points_graph.run(["landmarks"], {"curves": curves, "avatar": avatar})
    rgb, _ = main_graph_on(points[0])
    np.testing.assert_allclose(engine.run(curves, avatar, kind="arkit").rgb, rgb, atol=1e-5)


# ------------------------------------------------------------------------------------ sessions


def test_a_landmarks_session_gets_the_engines_textures(service: AvatarService, engine: Engine) -> None:
    face = mouth_open(neutral_face())
    with AvatarClient(address=service.bound_address) as client:
        model = client.hello().models[0]
        assert model["landmark_driven"] is True and "landmarks" in model["drivers"]
        session = client.open(avatar=0, driver="landmarks", stabilise=False)
        texture = render(client, session, face)
        assert isinstance(texture, Texture)
    # The stabiliser splits and joins the points even with its filters off: float rounding, a level at most.
    assert np.abs(texture.buffer.array().astype(int) - texture_of(engine, face).astype(int)).max() <= 1


def test_an_arkit_session_gets_textures(service: AvatarService, engine: Engine) -> None:
    curves = np.zeros(len(ARKIT_CURVES), np.float32)
    curves[ARKIT_CURVES.index("jawOpen")] = 0.7
    with AvatarClient(address=service.bound_address) as client:
        session = client.open(avatar=0, driver="arkit", stabilise=False)
        texture = render(client, session, curves)
        assert isinstance(texture, Texture) and texture.buffer.array().shape == (SIZE, SIZE, 4)
    expected = engine.run(curves[None], np.zeros(1, np.int64), kind="arkit")
    np.testing.assert_array_equal(texture.buffer.array(), imaging.to_texture_pixels(expected.rgb, expected.alpha)[0])


def test_an_image_session_without_crop_auto_is_refused_at_open_in_one_line(service: AvatarService) -> None:
    with AvatarClient(address=service.bound_address) as client:
        for crop in ("none", None):
            with pytest.raises(ServerError) as refused:
                client.open(avatar=0, **({"crop": crop} if crop else {}))
            assert refused.value.code == "bad_request" and refused.value.message == IMAGE_REFUSAL


def test_retarget_is_refused_where_it_does_not_apply(service: AvatarService, contract_model_path: Path) -> None:
    for fields, message in (
        ({"driver": "arkit", "retarget": True}, "the arkit graph retargets onto the avatar already"),
        ({"driver": "landmarks", "retarget": "yes"}, "retarget must be true or false"),
    ):
        session = RawSession(service.bound_address, avatar=0, **fields)
        try:
            assert session.reply.op == "error" and session.reply.header["code"] == "bad_request", fields
            assert message in session.reply.header["message"] and "\n" not in session.reply.header["message"]
        finally:
            session.close()
    pictures = AvatarService(engine=Engine(model_path=contract_model_path), config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    pictures.start()
    try:
        with AvatarClient(address=pictures.bound_address) as client:
            assert client.hello().models[0]["landmark_driven"] is False
        refused = RawSession(pictures.bound_address, avatar=0, retarget=True)
        try:
            reply = refused.reply
            assert reply.op == "error" and reply.header["code"] == "bad_request"
            assert reply.header["message"] == "retarget is for landmark-driven models; contract is driven by pictures"
        finally:
            refused.close()
        plain = RawSession(pictures.bound_address, avatar=0)  # what worked before still works, and says it does not retarget
        assert plain.reply.op == "open" and plain.reply.header["retarget"] is False
        plain.close()
    finally:
        pictures.stop()


def test_retarget_moves_the_drivers_face_onto_the_avatars(service: AvatarService, engine: Engine) -> None:
    """A driver whose face is wider than the avatar's: without retarget the avatar takes on that face; with it the first
    frame renders the avatar's own neutral face, and later frames its neutral plus the driver's (scaled) motion."""
    driver_neutral = stretched(neutral_face())
    talking = mouth_open(driver_neutral)
    target = engine.neutral_landmarks[0]
    plain = RawSession(service.bound_address, avatar=0, driver="landmarks", filter=False)
    moved = RawSession(service.bound_address, avatar=0, driver="landmarks", filter=False, retarget=True)
    try:
        assert plain.reply.header["retarget"] is False and moved.reply.header["retarget"] is True
        first_plain, first_moved = plain.pixels(driver_neutral), moved.pixels(driver_neutral)
        assert np.abs(first_plain.astype(int) - texture_of(engine, driver_neutral).astype(int)).max() <= 1
        np.testing.assert_array_equal(first_moved, texture_of(engine, target))  # the driver's neutral is the avatar's
        assert np.abs(first_plain.astype(int) - first_moved.astype(int)).max() > 8
        later_plain, later_moved = plain.pixels(talking), moved.pixels(talking)
        expected = retarget_landmarks(talking, driver_neutral, target)
        assert np.abs(texture_of(engine, expected).astype(int) - later_moved.astype(int)).max() <= 1
        assert np.abs(later_plain.astype(int) - later_moved.astype(int)).max() > 8
        for session, retarget in ((plain, False), (moved, True)):  # each connection sees its own session in `stats`
            (entry,) = session.request({"op": "stats"}).header["sessions"]
            assert entry["retarget"] is retarget
    finally:
        plain.close()
        moved.close()


# ------------------------------------------------------------------------------------ image sessions (face mesh)


def test_an_image_session_with_crop_auto_is_driven_by_the_face_meshs_landmarks(service: AvatarService, engine: Engine) -> None:
    pytest.importorskip("mediapipe")
    pytest.importorskip("skimage.data")
    from tests.server.test_drivers import webcam_frame

    with AvatarClient(address=service.bound_address) as client:
        session = client.open(avatar=0, crop="auto", landmarks=True, stabilise=False)
        texture = render(client, session, webcam_frame(), timestamp=0.0)
        assert isinstance(texture, Texture) and texture.face_found is True and texture.buffer.array().shape == (SIZE, SIZE, 4)
    points = np.array(texture.landmarks, np.float32)  # the mesh's points over the crop, rounded to 1e-5
    assert np.abs(texture.buffer.array().astype(int) - texture_of(engine, points).astype(int)).max() <= 2
    # Retargeted, the first frame with a face is the driver's neutral: the avatar's own neutral face renders.
    retargeted = RawSession(service.bound_address, avatar=0, driver="image", crop="auto", retarget=True)
    try:
        assert retargeted.reply.op == "open" and retargeted.reply.header["retarget"] is True
        np.testing.assert_array_equal(retargeted.pixels(webcam_frame()), texture_of(engine, engine.neutral_landmarks[0]))
        assert retargeted.pixels(webcam_frame((6, 0))).shape == (SIZE, SIZE, 4)
    finally:
        retargeted.close()


# ------------------------------------------------------------------------------------ bench


def test_bench_measures_a_landmark_driven_model_through_its_landmarks(landmark_model_path: Path, tmp_path: Path) -> None:
    figures = tmp_path / "bench.json"
    bench = run_cli("megalive", "bench", "--model", str(landmark_model_path), "--seconds", "0.3", "--json", str(figures))
    assert bench.returncode == 0, bench.stderr
    assert "landmark-driven" in bench.stdout and "arkit driver (cost per frame × vs landmarks" in bench.stdout
    report = json.loads(figures.read_text())
    assert report["driver"] == "landmarks" and report["raw_engine_fps"] > 0 and report["throughput"]["1"]["fps"] > 0
    assert set(report["capture_raw_fps"]) == {"arkit"}
