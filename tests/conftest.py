"""Shared fixtures: a tiny contract model exported once per test session, an engine on it, and addresses."""

from __future__ import annotations

import socket
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


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def engine(contract_model_path: Path):
    """An Engine on the contract model (test modules that need other options define their own)."""
    from server.engine import Engine

    return Engine(model_path=contract_model_path)


@pytest.fixture
def address() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"  # a fixed port, so a test's server can come back on it
