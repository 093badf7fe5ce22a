"""The MegaPortraits teacher served directly (models/export_teacher.py): a tiny teacher made and exported through
`megalive-train` (base, then export-teacher) is served like any contract-v2 model — image sessions return frames of the
asked size, a portrait enrolls one-shot as its encoded source, `hello` says it is a teacher — and what it cannot do
(capture drivers, refinement) is refused or reported in one line. Untrained weights: plumbing, not looks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from client.client import AvatarClient, ServerError
from contract.avatar_bank import read_bank
from contract.model_card import read_model_card
from server.engine import Engine
from server.refinement import refinement_unavailable
from server.service import AvatarService, ServiceConfig
from tests.server.test_service import render_one

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSENT = "I, the person in this photograph, agree to an avatar of my face for testing MegaLive."


@pytest.fixture(scope="module")
def teacher_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base model after one step (`megalive-train base`), exported with two synthetic avatars (`export-teacher`)."""
    import torch

    from models.cli import main

    folder = tmp_path_factory.mktemp("teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = ["base", "--preset", "tiny", "--steps", "1", "--batch", "1", "--identities", "4", "--workers", "0"]
        assert main([*base, "--perceptual-weight", "0", "--face-weight", "0", "--run", str(folder / "run")]) == 0
        out = folder / "model" / "teacher.onnx"
        assert (
            main(["export-teacher", "--checkpoint", str(folder / "run" / "checkpoint.pt"), "--out", str(out), "--synthetic-avatars", "2"])
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    return tmp_path / "enrolled.avatars.npz"


@pytest.fixture
def service(teacher_model: Path, bank: Path):
    engine = Engine(model_path=teacher_model, max_batch=4, bank_path=bank)
    service = AvatarService(
        engine=engine, config=ServiceConfig(bind="tcp://127.0.0.1:*", max_batch=4, max_enroll_portraits=3, refine_steps=0)
    )
    service.start()
    yield service
    service.stop()


def test_the_engine_runs_the_teacher_on_each_avatars_encoded_source(teacher_model: Path, bank: Path) -> None:
    engine = Engine(model_path=teacher_model, bank_path=bank, warmup=False)
    card = read_model_card(teacher_model)
    assert (engine.family, engine.teacher, engine.contract, engine.drivers) == ("teacher", True, 2, ("image",))
    assert engine.avatar_names == ("synthetic-1", "synthetic-2") and engine.can_enroll and card.enrollment is not None
    driver = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    out = engine.run(driver, np.array([1, 0]))
    assert out.rgb.shape == (2, 3, 64, 64) and out.alpha.shape == (2, 1, 64, 64)
    graph = ort.InferenceSession(str(teacher_model), providers=["CPUExecutionProvider"])
    (rgb,) = graph.run(["rgb"], {"driver": driver, "identity": read_bank(card.enrollment.bank_path).identity[[1, 0]]})
    np.testing.assert_allclose(out.rgb, rgb, atol=1e-6)
    with pytest.raises(ValueError, match="no 'arkit' driver"):
        engine.run(np.zeros((1, 61), np.float32), np.array([0]), kind="arkit")
    why = refinement_unavailable(card)
    assert why is not None and "MegaPortraits teacher" in why and "one-shot" in why
    portraits = np.random.default_rng(1).random((3, 3, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(engine.embed(portraits), engine.embed(portraits[:1]))  # one-shot: the first portrait only


def test_the_server_streams_enrolls_and_describes_the_teacher(service: AvatarService, bank: Path) -> None:
    astronaut = pytest.importorskip("skimage.data").astronaut() if _has_mediapipe() else None
    frame = np.random.default_rng(2).integers(0, 256, (80, 80, 3), dtype=np.uint8)
    with AvatarClient(address=service.bound_address, timeout_s=30) as client:
        info = client.hello()
        model = info.models[0]
        assert model["family"] == "teacher" and model["contract"] == 2 and model["drivers"] == ["image"]
        assert model["teacher"]["preset"] == "tiny" and model["teacher"]["one_shot"] is True and model["teacher"]["enhancer"] is False
        assert model["teacher"]["identity_shape"] == [33, 16, 16] and "checkpoint" not in model["teacher"]  # no local paths
        assert info.capabilities["enroll"]["available"] is True
        refinement = info.capabilities["enroll"]["refinement"]
        assert refinement["available"] is False and "teacher" in refinement["why"]
        assert render_one(client, client.open(avatar=1), frame).buffer.array().shape == (64, 64, 4)
        assert render_one(client, client.open(avatar=0, output_format="rgb8", size=(96, 128)), frame).buffer.array().shape == (96, 128, 3)
        for kind in ("arkit", "landmarks"):
            with pytest.raises(ServerError) as refused:
                client.open(avatar=0, driver=kind)
            message = refused.value.message
            assert refused.value.code == "bad_request" and "driven by pictures only" in message and "\n" not in message
        if astronaut is None:
            return
        enrolled = client.enroll(name="Eileen", consent=CONSENT, portraits=[astronaut, astronaut[:, ::-1].copy()], refine_steps=5)
        assert (enrolled.avatar, enrolled.name, enrolled.frames) == (2, "Eileen", 1)
        assert enrolled.notes == ("the teacher is one-shot: it encoded portrait 1 and left the other 1",)
        assert enrolled.refinement_job is None and "teacher" in str(enrolled.refinement_unavailable)
        assert [a.name for a in client.avatars()] == ["synthetic-1", "synthetic-2", "Eileen"]
        assert render_one(client, client.open(avatar=2), frame).buffer.array().shape == (64, 64, 4)
    stored = read_bank(bank)
    assert stored.names == ("Eileen",) and stored.identity.shape == (1, 33, 16, 16)
    assert "teacher's source half" in str(stored.records[0].provenance["how"]) and stored.records[0].provenance["frames"] == 1


def test_serve_says_it_serves_a_teacher(teacher_model: Path, bank: Path) -> None:
    command = [sys.executable, "-m", "megalive", "serve", "--model", str(teacher_model), "--bind", "tcp://127.0.0.1:*", "--bank", str(bank)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
    finally:
        process.terminate()
        process.wait(30)
    assert "serving teacher (2 avatars, 64×64, MegaPortraits teacher tiny, one-shot, pose: learned, " in line and " on tcp://" in line


def _has_mediapipe() -> bool:
    import importlib.util

    return importlib.util.find_spec("mediapipe") is not None
