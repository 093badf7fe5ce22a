"""Shared fixtures: a tiny contract model exported once per test session, an engine on it, and addresses."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def contract_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32×32, 3-avatar random-weight model that follows the avatar contract (tests transport, not looks)."""
    from models.contract_model import ContractModel, ContractModelConfig
    from models.export import export_avatar_model

    out = tmp_path_factory.mktemp("models") / "contract.onnx"
    config = ContractModelConfig(resolution=32, num_avatars=3, width=8)
    report = export_avatar_model(
        ContractModel(config=config),
        out_path=out,
        resolution=(32, 32),
        avatar_names=["ada", "bo", "cy"],
        command="tests/conftest.py contract_model_path",
        config={"resolution": 32},
    )
    assert report.max_abs_error < 1e-4
    return out


@pytest.fixture
def engine(contract_model_path: Path):
    """An Engine on the contract model (test modules that need other options define their own)."""
    from server.engine import Engine

    return Engine(model_path=contract_model_path)


@pytest.fixture
def address(tmp_path: Path) -> str:
    """An address a test's server can leave and come back on. An ipc socket in the test's own private
    folder: no other process can take it in between, as another could take a TCP port."""
    return f"ipc://{tmp_path}/megalive.sock"


@pytest.fixture
def future_protocol_server():
    """A stand-in peer that answers every request in protocol v2 (a server newer than this client).

    Yields its address. Not a fake of our server: a minimal other-version peer, to test what a
    client says when the versions differ."""
    import threading

    import msgpack
    import zmq

    peer_socket = zmq.Context.instance().socket(zmq.ROUTER)
    peer_socket.setsockopt(zmq.LINGER, 0)
    port = peer_socket.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def answer_in_v2() -> None:
        while not stop.is_set():
            if peer_socket.poll(50):
                peer, header = peer_socket.recv_multipart()[:2]
                request = msgpack.unpackb(header)
                peer_socket.send_multipart([peer, msgpack.packb({"v": 2, "op": "hello", "id": request.get("id")})])

    thread = threading.Thread(target=answer_in_v2, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{port}"
    stop.set()
    thread.join()
    peer_socket.close()


@pytest.fixture(scope="session")
def multi_driver_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64×64, 3-avatar untrained student with its arkit and landmarks drivers (the puppet, an untrained landmark
    solver), exported together (tests what the server does with the three driver kinds, not looks)."""
    import torch

    from models.export import ExtraDriver, export_avatar_model
    from models.megaportraits.puppet import (
        CAPTURE_INPUTS,
        LandmarkSolver,
        LandmarkSolverConfig,
        Puppet,
        PuppetConfig,
        PuppetDrivenStudent,
    )
    from models.megaportraits.student import Student, student_config

    torch.manual_seed(0)
    student = Student(config=student_config("tiny", num_avatars=3))
    puppet = Puppet(config=PuppetConfig(render_resolution=24, resolution=64))
    solvers = {"arkit": None, "landmarks": LandmarkSolver(config=LandmarkSolverConfig(hidden_features=32, hidden_layers=1))}
    extras = [
        ExtraDriver(
            kind=kind,
            module=PuppetDrivenStudent(student=student, puppet=puppet, solver=solver),
            input_name=CAPTURE_INPUTS[kind][0],
            input_shape=CAPTURE_INPUTS[kind][1],
            config={"kind": kind},
        )
        for kind, solver in solvers.items()
    ]
    out = tmp_path_factory.mktemp("models") / "student.onnx"
    report = export_avatar_model(
        student,
        out_path=out,
        resolution=(64, 64),
        avatar_names=["ada", "bo", "cy"],
        command="tests/conftest.py multi_driver_model_path",
        config={"preset": "tiny"},
        extra_drivers=extras,
    )
    assert report.max_abs_error < 1e-4
    return out


def export_enrollable_model(out: Path, *, refinable: bool) -> Path:
    """A 64×64 untrained student of contract v2 (identity tensors in, an identity embedder, a bank of 3 avatars) with its
    arkit driver, exported together; ``refinable``: with the student's weights beside it (few-shot refinement)."""
    import numpy as np
    import torch

    from contract.avatar_bank import AvatarBank, AvatarRecord
    from models.export import EnrollmentExport, ExtraDriver, export_avatar_model
    from models.megaportraits.identity_embedder import IdentityEmbedder, embedder_config
    from models.megaportraits.puppet import CAPTURE_INPUTS, Puppet, PuppetConfig, PuppetDrivenStudent
    from models.megaportraits.student import IdentityInputStudent, Student, student_config

    torch.manual_seed(0)
    student = Student(config=student_config("tiny", num_avatars=3))
    graph = IdentityInputStudent(student=student)
    names = ("ada", "bo", "cy")
    bank = AvatarBank(
        identity=student.identity.detach().numpy().copy(),
        thumbnails=np.random.default_rng(0).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8),
        records=tuple(AvatarRecord(name=name, consent=None, provenance={"how": "tests"}) for name in names),
    )
    arkit = ExtraDriver(
        kind="arkit",
        module=PuppetDrivenStudent(student=graph, puppet=Puppet(config=PuppetConfig(render_resolution=24, resolution=64))),
        input_name=CAPTURE_INPUTS["arkit"][0],
        input_shape=CAPTURE_INPUTS["arkit"][1],
        config={"kind": "arkit"},
    )
    embedder = IdentityEmbedder(config=embedder_config("tiny", student.config))
    report = export_avatar_model(
        graph,
        out_path=out,
        resolution=(64, 64),
        avatar_names=names,
        command="tests/conftest.py enrollable_model_path",
        config={"preset": "tiny"},
        extra_drivers=[arkit],
        enrollment=EnrollmentExport(embedder=embedder, bank=bank, student=student if refinable else None),
    )
    assert report.max_abs_error < 1e-4
    return out


@pytest.fixture(scope="session")
def enrollable_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained 64×64 contract-v2 model without student weights: tests enrollment's plumbing, not looks."""
    return export_enrollable_model(tmp_path_factory.mktemp("models") / "enrollable.onnx", refinable=False)


@pytest.fixture(scope="session")
def refinable_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with its student's weights beside it, as `megalive-train export` writes a v2 model: it refines."""
    return export_enrollable_model(tmp_path_factory.mktemp("models") / "refinable.onnx", refinable=True)
