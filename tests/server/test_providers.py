"""The GPU path's CPU-testable parts: which ONNX Runtime providers the engine and `megalive bench --provider` ask for,
the refusal when one is not installed, and IO binding (the GPU providers' feeding path) run on the CPU device, where
its outputs must equal plain run()'s. No GPU here: the CUDA and TensorRT providers themselves never run in this suite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from server.engine import (
    PROVIDER_CHOICES,
    Engine,
    IoBoundSession,
    ModelError,
    choose_providers,
    io_binding_device,
    providers_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_BUILD = [TENSORRT, CUDA, CPU]  # what onnxruntime-gpu reports
CPU_BUILD = ["AzureExecutionProvider", CPU]  # what the CPU package reports


def test_the_best_installed_providers_are_chosen_gpu_first_cpu_last() -> None:
    assert choose_providers(None, available=GPU_BUILD) == [TENSORRT, CUDA, CPU]
    assert choose_providers(None, available=[CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers(None, available=CPU_BUILD) == [CPU]
    assert choose_providers(None) == [p for p in (TENSORRT, CUDA, CPU) if p in ort.get_available_providers()]  # this machine's


@pytest.mark.parametrize(("choice", "expected"), [("cpu", [CPU]), ("cuda", [CUDA, CPU]), ("tensorrt", [TENSORRT, CUDA, CPU])])
def test_bench_provider_names_map_to_provider_lists(choice: str, expected: list[str]) -> None:
    assert providers_for(choice, available=GPU_BUILD) == expected
    assert list(PROVIDER_CHOICES[choice]) == expected


@pytest.mark.parametrize("choice", ["cuda", "tensorrt"])
def test_a_gpu_provider_on_a_cpu_build_is_refused_in_one_line(choice: str) -> None:
    with pytest.raises(ModelError) as refused:
        providers_for(choice, available=CPU_BUILD)
    message = str(refused.value)
    assert "\n" not in message and "onnxruntime-gpu" in message and "CPUExecutionProvider" in message
    with pytest.raises(ModelError, match="unknown provider 'gpu'"):
        providers_for("gpu")


def test_io_binding_feeds_the_gpu_providers_only() -> None:
    assert io_binding_device([CUDA, CPU]) == "cuda" and io_binding_device([TENSORRT, CUDA, CPU]) == "cuda"
    assert io_binding_device([CPU]) is None and io_binding_device([]) is None


def test_io_binding_on_the_cpu_device_gives_plain_runs_outputs_and_keeps_its_input_buffers(enrollable_model_path: Path) -> None:
    plain = Engine(model_path=enrollable_model_path, max_batch=4)
    bound = Engine(model_path=enrollable_model_path, max_batch=4, io_binding=True)
    assert isinstance(bound.session, IoBoundSession) and bound.session.device == "cpu"
    assert bound.lane_layout.lanes == 1  # lanes are for in-process CPU sessions; a bound (GPU) graph runs a batch whole
    assert not isinstance(plain.session, IoBoundSession)  # on the CPU provider binding is off unless asked for
    generator = np.random.default_rng(0)
    for batch in (1, 3):
        driver = generator.random((batch, 3, 64, 64), dtype=np.float32)
        avatars = np.arange(batch) % 3
        got, want = bound.run(driver, avatars), plain.run(driver, avatars)
        np.testing.assert_array_equal(got.rgb, want.rgb)
        np.testing.assert_array_equal(got.alpha, want.alpha)
    curves = generator.random((2, 61), dtype=np.float32)
    np.testing.assert_array_equal(
        bound.run(curves, np.array([1, 2]), kind="arkit").rgb, plain.run(curves, np.array([1, 2]), kind="arkit").rgb
    )
    portraits = generator.random((2, 3, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(bound.embed(portraits), plain.embed(portraits))
    kept = bound.session.input_buffers  # one device buffer per (input, shape): a repeated shape reuses it
    bound.run(generator.random((3, 3, 64, 64), dtype=np.float32), np.array([0, 1, 2]))
    again = bound.session.input_buffers
    assert again.keys() == kept.keys() and all(again[key] is kept[key] for key in kept)


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has the CUDA provider")
def test_an_engine_asked_for_cuda_without_it_refuses_in_one_line(contract_model_path: Path) -> None:
    with pytest.raises(ModelError, match=r"CUDAExecutionProvider.*not available.*onnxruntime-gpu"):
        Engine(model_path=contract_model_path, providers=[CUDA, CPU])


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has the CUDA provider")
def test_bench_provider_cuda_fails_with_one_clear_line_here(contract_model_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "megalive", "bench", "--model", str(contract_model_path), "--provider", "cuda", "--seconds", "0.1"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert re.match(r"megalive bench: execution providers \['CUDAExecutionProvider'\] are not available", line), line
    assert "onnxruntime-gpu" in line


def test_the_gpu_extra_and_make_install_gpu_pin_the_same_onnxruntime_gpu() -> None:
    import tomllib

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = extras["gpu"]
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^ORT_GPU := (.+)$", makefile, re.MULTILINE).group(1) == pin
    assert pin.startswith("onnxruntime-gpu") and "==" in pin
