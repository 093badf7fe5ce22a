"""Enrollment on the server (contract v2): the engine looks avatars' identity tensors up in the banks, `enroll` turns a
photograph into an avatar at once that streams like the others and survives a restart, and every bad input is
refused in one line with the bank untouched. The model is untrained (conftest.enrollable_model_path): plumbing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from client.client import AvatarClient, ServerError, Texture
from contract.avatar_bank import read_bank
from contract.model_card import read_model_card
from server.engine import Engine
from server.service import AvatarService, ServiceConfig
from tests.server.test_hardening import bomb_png
from tests.server.test_service import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSENT = "I, the person in this photograph, agree to an avatar of my face for testing MegaLive."


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    pytest.importorskip("mediapipe")
    return pytest.importorskip("skimage.data").astronaut()  # 512×512×3, one frontal face (public domain)


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    return tmp_path / "enrolled.avatars.npz"


@pytest.fixture
def service(enrollable_model_path: Path, bank: Path):
    engine = Engine(model_path=enrollable_model_path, max_batch=4, bank_path=bank)
    service = AvatarService(
        engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*", max_batch=4, max_enroll_portraits=3, refine_steps=0)
    )
    service.start()
    yield service
    service.stop()


def test_the_engine_feeds_each_avatars_identity_tensor_from_the_bank(enrollable_model_path: Path, bank: Path) -> None:
    engine = Engine(model_path=enrollable_model_path, bank_path=bank, warmup=False)
    card = read_model_card(enrollable_model_path)
    assert engine.contract == 2 and engine.avatar_names == ("ada", "bo", "cy") and engine.can_enroll and engine.bank_problem is None
    assert card.enrollment is not None
    shipped = read_bank(card.enrollment.bank_path)
    driver = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    out = engine.run(driver, np.array([2, 0]))
    graph = ort.InferenceSession(str(enrollable_model_path), providers=["CPUExecutionProvider"])
    (rgb,) = graph.run(["rgb"], {"driver": driver, "identity": shipped.identity[[2, 0]]})
    np.testing.assert_allclose(out.rgb, rgb, atol=1e-6)
    with pytest.raises(ValueError, match="outside the 3 avatars"):
        engine.run(driver[:1], np.array([3]))
    assert len(engine.thumbnails()) == 3 and engine.thumbnails()[0].shape == (24, 24, 3)


def test_a_photograph_enrolls_at_once_streams_and_survives_a_restart(
    service: AvatarService, enrollable_model_path: Path, bank: Path, astronaut: np.ndarray
) -> None:
    with AvatarClient(address=service.bound_address, timeout_s=30) as client:
        info = client.hello()
        assert info.capabilities["enroll"]["available"] is True and info.limits["max_enroll_portraits"] == 3
        enrolled = client.enroll(name="Eileen", consent=CONSENT, portraits=[astronaut])
        assert (enrolled.avatar, enrolled.name, enrolled.frames, enrolled.notes) == (3, "Eileen", 1, ())
        listed = client.avatars()
        assert [a.name for a in listed] == ["ada", "bo", "cy", "Eileen"] and listed[3].thumbnail is not None
        session = client.open(avatar=3)
        seq = client.send_frame(session, np.zeros((64, 64, 3), np.uint8))
        assert any(isinstance(e, Texture) and e.seq == seq for e in wait_for(client, Texture))
    stored = read_bank(bank)
    assert stored.names == ("Eileen",)
    record = stored.records[0]
    assert record.consent is not None and record.consent.statement == CONSENT and len(record.consent.sha256) == 64
    assert record.provenance["frames"] == 1 and "embedder" in str(record.provenance["how"])
    assert np.abs(stored.identity[0]).max() > 0  # the embedder's tensor, not a placeholder of zeros
    restarted = Engine(model_path=enrollable_model_path, bank_path=bank, warmup=False)
    assert restarted.avatar_names == ("ada", "bo", "cy", "Eileen")


def test_bad_enrollments_are_refused_in_one_line_and_leave_the_bank_alone(
    service: AvatarService, bank: Path, astronaut: np.ndarray
) -> None:
    grey = np.full((200, 200, 3), 128, np.uint8)
    with AvatarClient(address=service.bound_address, timeout_s=30) as client:
        client.hello()
        refusals = [
            ({"name": "Eileen", "consent": "   ", "portraits": [astronaut]}, "consent statement"),
            ({"name": "ada", "consent": CONSENT, "portraits": [astronaut]}, "already in use"),
            ({"name": "", "consent": CONSENT, "portraits": [astronaut]}, "printable characters"),
            ({"name": "Grey", "consent": CONSENT, "portraits": [grey]}, "no face found in portrait 1"),
            ({"name": "Many", "consent": CONSENT, "portraits": [astronaut] * 4}, "1 to 3 portraits"),
        ]
        for request, message in refusals:
            with pytest.raises(ServerError) as raised:
                client.enroll(**request)
            assert raised.value.code == "bad_request" and message in raised.value.message and "\n" not in raised.value.message
        assert [a.name for a in client.avatars()] == ["ada", "bo", "cy"]
    assert not bank.exists()  # nothing was written


def test_of_several_faces_the_largest_is_taken_and_said(service: AvatarService, astronaut: np.ndarray) -> None:
    from PIL import Image

    canvas = np.full((512, 960, 3), 200, np.uint8)  # wide: the face mesh alone finds neither face in it
    canvas[:, :512] = astronaut
    canvas[56:456, 540:940] = np.asarray(Image.fromarray(astronaut).resize((400, 400)))  # the same face, smaller
    with AvatarClient(address=service.bound_address, timeout_s=30) as client:
        client.hello()
        enrolled = client.enroll(name="Pair", consent=CONSENT, portraits=[canvas])
    assert enrolled.notes == ("portrait 1: 2 faces; took the largest",)


def test_a_corrupt_bank_leaves_the_models_own_avatars_and_says_which_file(enrollable_model_path: Path, bank: Path) -> None:
    bank.write_bytes(b"not a bank")
    engine = Engine(model_path=enrollable_model_path, bank_path=bank, warmup=False)
    assert engine.avatar_names == ("ada", "bo", "cy")
    assert engine.bank_problem is not None and str(bank) in engine.bank_problem and "own avatars only" in engine.bank_problem


def test_enroll_command_reads_pictures_and_refuses_bad_files(tmp_path: Path, astronaut: np.ndarray) -> None:
    from PIL import Image

    picture = tmp_path / "me.png"
    Image.fromarray(astronaut).save(picture)
    huge = tmp_path / "huge.png"
    huge.write_bytes(bomb_png(20000))

    def enroll(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "megalive", "enroll", "--name", "Me", "--consent", CONSENT, *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)

    dry = enroll(str(picture), "--dry-run")
    assert dry.returncode == 0 and '"portraits": "512×512"' in dry.stdout
    too_large = enroll(str(huge), "--dry-run")
    assert too_large.returncode == 2 and "huge.png: too large a picture" in too_large.stderr
    missing = enroll(str(tmp_path / "none.png"), "--dry-run")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    nobody = enroll(str(picture), "--server", "tcp://127.0.0.1:9", "--timeout", "0.5")
    assert nobody.returncode == 2 and nobody.stderr.count("\n") == 1


def test_a_hosts_enrollment_job_runs_on_its_own_thread_and_reports_in_one_line(
    service: AvatarService, tmp_path: Path, astronaut: np.ndarray
) -> None:
    from PIL import Image

    from client.enrollment import EnrollmentJob, EnrollRequest
    from client.live import LiveConfig

    photo = tmp_path / "me.jpg"
    Image.fromarray(astronaut).save(photo, quality=92)
    (tmp_path / "notes.txt").write_text("not a picture")

    def run(*, server: str | None = None, **fields: object) -> EnrollmentJob:
        connection = LiveConfig(server=server or service.bound_address)
        job = EnrollmentJob(
            request=EnrollRequest(**{"name": "Jo", "consent": CONSENT, "paths": (str(photo),), "connection": connection, **fields})
        )
        job.start()
        assert job.wait(60)
        return job

    enrolled = run()
    assert enrolled.state == "enrolled" and enrolled.result is not None and enrolled.result.avatar == 3
    assert enrolled.describe() == f"enrolled avatar 3 'Jo' from 1 portrait(s) in {enrolled.result.seconds:.1f} s"
    for fields, message in (
        ({}, "already in use"),
        ({"name": "Kim", "consent": " "}, "consent statement is required"),
        ({"name": "Kim", "paths": (str(tmp_path / "notes.txt"),)}, "not a PNG or JPEG picture"),
        ({"name": "Kim", "paths": (str(tmp_path / "none.png"),)}, "no such file"),
    ):
        job = run(**fields)
        assert job.state == "refused" and message in job.describe() and "\n" not in job.describe()
    gone = run(name="Kim", server="tcp://127.0.0.1:9", timeout_s=0.5)
    assert gone.state == "failed"


def test_a_phone_photo_sent_unchanged_enrolls_and_a_larger_one_is_refused(service: AvatarService, astronaut: np.ndarray) -> None:
    import io

    from PIL import Image

    from client.protocol import EncodedBuffer
    from tests.server.test_hardening import jpeg_declaring

    photo = Image.new("RGB", (4032, 3024), (180, 170, 160))  # 12 MP: more than any webcam frame the server takes
    photo.paste(Image.fromarray(astronaut).resize((1500, 1500)), (1200, 700))
    encoded = io.BytesIO()
    photo.save(encoded, format="JPEG", quality=85)
    with AvatarClient(address=service.bound_address, timeout_s=60) as client:
        assert client.hello().limits["max_portrait_pixels"] == 6000 * 4000
        enrolled = client.enroll(
            name="Phone", consent=CONSENT, portraits=[EncodedBuffer(codec="jpeg", data=memoryview(encoded.getvalue()))]
        )
        assert enrolled.avatar == 3
        with pytest.raises(ServerError) as raised:
            client.enroll(
                name="Huge", consent=CONSENT, portraits=[EncodedBuffer(codec="jpeg", data=memoryview(jpeg_declaring(8000, 6000)))]
            )
        assert raised.value.code == "too_large"
