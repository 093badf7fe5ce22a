"""Few-shot refinement on the server: after a one-shot enroll, `megalive-train enroll` runs in a separate process, its
progress shows in `stats`, its result replaces the avatar's tensor in the bank (and survives a restart), a cancelled
or failed job leaves the one-shot avatar as it was, and a server that cannot refine says why and still enrolls. With
a teacher target (`serve --refine-teacher`) the jobs fit the teacher's reenactments, and a wrong teacher stops the
server at start in one line. The model and the teacher are untrained (conftest.refinable_model_path, a random tiny
teacher): plumbing, not looks."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from client.client import AvatarClient, ServerError
from contract.avatar_bank import read_bank
from server.engine import Engine
from server.refinement import RefinementJobs, RefinementTarget, check_refinement_target
from server.service import AvatarService, ServiceConfig
from tests.server.test_enrollment import CONSENT

JOB_COMMAND = (sys.executable, "-m", "models.cli", "enroll", "--allow-missing-nets")  # the suite's box may lack the nets


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    pytest.importorskip("mediapipe")
    return pytest.importorskip("skimage.data").astronaut()


def _service(
    model: Path, bank: Path, *, command: tuple[str, ...] | None = JOB_COMMAND, target: RefinementTarget | None = None
) -> AvatarService:
    target = target or RefinementTarget()  # the frames
    engine = Engine(model_path=model, max_batch=4, bank_path=bank)
    config = ServiceConfig(bind="tcp://127.0.0.1:*", max_batch=4, refine_steps=0, refine_target=target)
    service = AvatarService(engine=engine, config=config)
    if command is not None:
        service.refinement = RefinementJobs(card=engine.card, command=command, target=target)
    service.start()
    return service


def _wait_for_job(client: AvatarClient, job_id: int, states: tuple[str, ...], timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = next(j for j in client.refinement_jobs() if j["job"] == job_id)
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def test_a_refined_avatar_replaces_the_one_shot_tensor_in_the_bank_and_survives_a_restart(
    refinable_model_path: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    bank = tmp_path / "bank.avatars.npz"
    service = _service(refinable_model_path, bank)
    try:
        with AvatarClient(address=service.bound_address, timeout_s=30) as client:
            assert client.hello().capabilities["enroll"]["refinement"]["available"] is True
            enrolled = client.enroll(name="Eileen", consent=CONSENT, portraits=[astronaut], refine_steps=6)
            assert enrolled.refinement_job is not None and enrolled.refinement_unavailable is None
            one_shot = read_bank(bank).identity[0].copy()  # written at once, before any refinement
            job = _wait_for_job(client, enrolled.refinement_job, ("done", "failed"))
            assert job["state"] == "done", job
            assert job["steps"] == 6 and job["step"] == 6 and job["avatar"] == 3 and job["loss"] is not None
            deadline = time.monotonic() + 10  # the service loop swaps the tensor in within a second of the job's end
            while np.array_equal(read_bank(bank).identity[0], one_shot) and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        service.stop()
    stored = read_bank(bank)
    assert not np.array_equal(stored.identity[0], one_shot)  # the refined tensor, not the one-shot one
    assert stored.records[0].provenance["refined"]["steps"] == 6 and stored.records[0].consent is not None
    restarted = Engine(model_path=refinable_model_path, bank_path=bank, warmup=False)
    assert restarted.avatar_names[-1] == "Eileen"


def test_a_cancelled_refinement_leaves_the_one_shot_avatar(refinable_model_path: Path, tmp_path: Path, astronaut: np.ndarray) -> None:
    bank = tmp_path / "bank.avatars.npz"
    service = _service(refinable_model_path, bank)
    try:
        with AvatarClient(address=service.bound_address, timeout_s=30) as client:
            client.hello()
            enrolled = client.enroll(name="Eileen", consent=CONSENT, portraits=[astronaut], refine_steps=1000)
            assert enrolled.refinement_job is not None
            one_shot = read_bank(bank).identity[0].copy()
            _wait_for_job(client, enrolled.refinement_job, ("running",))
            assert client.cancel_refinement(enrolled.refinement_job) is True
            assert client.cancel_refinement(enrolled.refinement_job) is False  # it had already ended
            job = _wait_for_job(client, enrolled.refinement_job, ("cancelled",))
            assert job["step"] < 1000
            with pytest.raises(ServerError, match="no refinement job 99"):
                client.cancel_refinement(99)
            with pytest.raises(ServerError, match="refine_steps must be an integer"):
                client.enroll(name="Other", consent=CONSENT, portraits=[astronaut], refine_steps=100_000)
            time.sleep(1.5)  # a poll of the service loop: nothing to apply
        np.testing.assert_array_equal(read_bank(bank).identity[0], one_shot)
    finally:
        service.stop()


def test_a_failed_job_leaves_the_bank_and_says_why(refinable_model_path: Path, tmp_path: Path, astronaut: np.ndarray) -> None:
    bank = tmp_path / "bank.avatars.npz"
    crashing = (sys.executable, "-c", "import sys; sys.stderr.write('refinement crashed: out of memory\\n'); sys.exit(3)")
    service = _service(refinable_model_path, bank, command=crashing)
    try:
        with AvatarClient(address=service.bound_address, timeout_s=30) as client:
            client.hello()
            enrolled = client.enroll(name="Eileen", consent=CONSENT, portraits=[astronaut], refine_steps=5)
            one_shot = read_bank(bank).identity[0].copy()
            job = _wait_for_job(client, enrolled.refinement_job, ("failed", "done"))
            assert job["state"] == "failed" and job["error"] == "refinement crashed: out of memory"
        np.testing.assert_array_equal(read_bank(bank).identity[0], one_shot)
    finally:
        service.stop()


def test_a_model_without_student_weights_enrolls_one_shot_and_says_it_cannot_refine(
    enrollable_model_path: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    service = _service(enrollable_model_path, tmp_path / "bank.avatars.npz", command=None)
    try:
        with AvatarClient(address=service.bound_address, timeout_s=30) as client:
            refinement = client.hello().capabilities["enroll"]["refinement"]
            assert refinement["available"] is False and "no student weights" in refinement["why"]
            enrolled = client.enroll(name="Eileen", consent=CONSENT, portraits=[astronaut], refine_steps=10)
            assert enrolled.avatar == 3 and enrolled.refinement_job is None
            assert enrolled.refinement_unavailable is not None and "no student weights" in enrolled.refinement_unavailable
    finally:
        service.stop()


def test_without_torch_the_server_says_refinement_needs_it(refinable_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from server import refinement

    real = importlib.util.find_spec
    monkeypatch.setattr(refinement.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    engine = Engine(model_path=refinable_model_path, warmup=False, bank_path=None)
    problem = refinement.refinement_unavailable(engine.card)
    assert problem is not None and "needs PyTorch" in problem


def test_enroll_command_follows_the_refinement_to_its_end(refinable_model_path: Path, tmp_path: Path, astronaut: np.ndarray) -> None:
    import subprocess

    from PIL import Image

    picture = tmp_path / "me.png"
    Image.fromarray(astronaut).save(picture)
    service = _service(refinable_model_path, tmp_path / "bank.avatars.npz")
    try:
        command = [sys.executable, "-m", "megalive", "enroll", "--name", "Me", "--consent", CONSENT, str(picture)]
        done = subprocess.run(
            [*command, "--server", service.bound_address, "--refine-steps", "3"], capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr
        assert "enrolled avatar 3 'Me' from 1 portrait(s)" in done.stdout and "refined in" in done.stdout
        assert "3 steps" in done.stdout
    finally:
        service.stop()


def test_jobs_run_one_at_a_time_and_closing_ends_them_all(refinable_model_path: Path) -> None:
    from contract.model_card import read_model_card

    card = read_model_card(refinable_model_path)
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")  # a job that never ends by itself
    jobs = RefinementJobs(card=card, command=sleeper)
    identity = np.zeros(card.enrollment.identity_shape, np.float32)
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    first = jobs.start(avatar=3, name="a", frames=frames, landmarks=None, identity=identity, steps=5)
    second = jobs.start(avatar=4, name="b", frames=frames, landmarks=None, identity=identity, steps=5)
    states = {job["job"]: job["state"] for job in jobs.as_dicts()}
    assert states == {first: "running", second: "queued"}
    assert jobs.cancel(second) is True and jobs.finished() == []  # a queued job cancels without ever starting
    third = jobs.start(avatar=5, name="c", frames=frames, landmarks=None, identity=identity, steps=5)
    running = jobs._jobs[first].process
    jobs.close()
    assert running is not None and running.poll() is not None  # the running process was ended
    assert {job["job"]: job["state"] for job in jobs.as_dicts()} == {first: "cancelled", second: "cancelled", third: "cancelled"}
    assert jobs._jobs[third].process is None  # closing started nothing new


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.models.test_refine_teacher import random_teacher_checkpoint

    return random_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def test_a_teacher_target_fits_its_reenactments_and_says_so(
    refinable_model_path: Path, tmp_path: Path, astronaut: np.ndarray, tiny_teacher: Path
) -> None:
    bank = tmp_path / "bank.avatars.npz"
    service = _service(refinable_model_path, bank, target=RefinementTarget(teacher=tiny_teacher))
    try:
        with AvatarClient(address=service.bound_address, timeout_s=30) as client:
            refinement = client.hello().capabilities["enroll"]["refinement"]
            assert refinement["target"] == {"kind": "teacher", "teacher": "teacher.pt", "enhancer": None}  # no server folders
            enrolled = client.enroll(name="Eileen", consent=CONSENT, portraits=[astronaut], refine_steps=3)
            job = _wait_for_job(client, enrolled.refinement_job, ("done", "failed"))
            assert job["state"] == "done", job
            deadline = time.monotonic() + 10
            while "refined" not in read_bank(bank).records[0].provenance and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        service.stop()
    refined = read_bank(bank).records[0].provenance["refined"]
    assert refined["target"]["kind"] == "teacher" and refined["target"]["teacher"]["path"] == str(tiny_teacher)
    assert "a frozen teacher's reenactments" in refined["how"] and refined["steps"] == 3


def test_a_wrong_refinement_teacher_is_refused_at_start_in_one_line(
    refinable_model_path: Path, enrollable_model_path: Path, tmp_path: Path, tiny_teacher: Path
) -> None:
    from contract.model_card import read_model_card

    card = read_model_card(refinable_model_path)
    check_refinement_target(card, RefinementTarget())  # the frames target: nothing to check
    check_refinement_target(card, RefinementTarget(teacher=tiny_teacher), command=JOB_COMMAND)
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="^--refine-teacher: megalive-train enroll: .*unreadable") as refused:
        check_refinement_target(card, RefinementTarget(teacher=not_a_checkpoint), command=JOB_COMMAND)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="^--refine-teacher: this server cannot refine avatars: .*no student weights"):
        check_refinement_target(read_model_card(enrollable_model_path), RefinementTarget(teacher=tiny_teacher), command=JOB_COMMAND)
    with pytest.raises(ValueError, match="give --refine-teacher as well"):
        RefinementTarget(enhancer=tiny_teacher)


def test_serve_refuses_a_wrong_refinement_teacher_in_one_line(refinable_model_path: Path, tmp_path: Path) -> None:
    import subprocess

    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    serve = [sys.executable, "-m", "megalive", "serve", "--model", str(refinable_model_path), "--bank", str(tmp_path / "bank.npz")]
    for options, expected in (
        (["--refine-teacher", str(not_a_checkpoint)], "megalive serve: --refine-teacher: megalive-train enroll: "),
        (["--refine-enhancer", str(not_a_checkpoint)], "megalive serve: --refine-enhancer enhances a teacher's reenactments"),
        (["--refine-teacher", str(not_a_checkpoint), "--no-enroll"], "megalive serve: --refine-teacher refines enrolled avatars"),
    ):
        done = subprocess.run([*serve, *options, "--dry-run"], capture_output=True, text=True, timeout=240)
        assert done.returncode == 2 and done.stderr.startswith(expected) and done.stderr.count("\n") == 1, done.stderr
