"""A CPU Triton for the tests: the real tritonserver that the nvidia-pytriton wheel bundles (pinned in the dev extras),
serving repositories that `megalive export-triton --kind cpu` wrote, with one change: the bundled server has no
onnxruntime backend (only the python backend), so each model's ``backend: "onnxruntime"`` becomes ``backend: "python"``
(model file model.py), and that model.py (tests/server/triton_python_model.py) runs the same model.onnx in ONNX Runtime.
Everything else is Triton's own: it reads the exported config.pbtxt (inputs, outputs, the v1 avatar's reshape,
dynamic batching, the instance group, the ``megalive_sha256`` parameter), batches, and answers gRPC.

The python backend's stub links the system's libpython3.11; when this interpreter has its own shared libpython
(pyenv builds do), it goes first on LD_LIBRARY_PATH so that the stub runs the library whose standard library it
imports (a Debian libpython 3.11.2 under pyenv's 3.11.7 standard library fails in multiprocessing).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON_MODEL = HERE / "triton_python_model.py"


class StandInError(RuntimeError):
    pass


def pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise StandInError("nvidia-pytriton is not installed (make install-dev installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stand_in_repository(exported: Sequence[Path], destination: Path) -> Path:
    """One repository holding every model of the ``exported`` repositories, each served by the python backend."""
    for repository in exported:
        for folder in sorted(p for p in repository.iterdir() if p.is_dir()):
            target = destination / folder.name
            shutil.copytree(folder, target)
            config = (target / "config.pbtxt").read_text(encoding="utf-8")
            if "KIND_GPU" in config:
                raise StandInError(f"{folder}: a CPU Triton cannot place KIND_GPU instances (export with --kind cpu)")
            swaps = {
                'backend: "onnxruntime"': 'backend: "python"',
                'default_model_filename: "model.onnx"': 'default_model_filename: "model.py"',
            }
            for old, new in swaps.items():
                if config.count(old) != 1:
                    raise StandInError(f"{folder}: expected one line {old!r} in config.pbtxt")
                config = config.replace(old, new)
            (target / "config.pbtxt").write_text(config, encoding="utf-8")
            for version in (p for p in target.iterdir() if p.is_dir()):
                shutil.copyfile(PYTHON_MODEL, version / "model.py")
    return destination


@dataclass
class CpuTriton:
    process: subprocess.Popen
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Triton's own shutdown (SIGTERM: it refuses new requests, finishes the ones in flight, unloads); killed
        after 30 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_cpu_triton(repository: Path, workdir: Path, *, grpc_port: int | None = None, timeout_s: float = 120.0) -> CpuTriton:
    """Start the bundled tritonserver on ``repository`` (gRPC on loopback only; HTTP and metrics off) and wait until
    it is ready; StandInError with the end of its log when it does not get there."""
    from tritonclient import grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    root = pytriton_dir()
    server = root / "tritonserver"
    backends = workdir / "backends"
    if not backends.exists():
        shutil.copytree(server / "backends", backends)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copyfile(
            server / "python_backend_stubs" / version / "triton_python_backend_stub", backends / "python" / "triton_python_backend_stub"
        )
        os.chmod(backends / "python" / "triton_python_backend_stub", 0o755)
    libraries = [str(root.parent / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("INSTSONAME") and (Path(libdir) / sysconfig.get_config_var("INSTSONAME")).exists():
        libraries.insert(0, libdir)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*libraries, *([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])])
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the stub's Python finds this environment
    port = grpc_port or free_port()
    log_path = workdir / f"tritonserver-{port}.log"
    command = [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--grpc-port={port}",
        "--grpc-address=127.0.0.1",
        "--allow-http=false",
        "--allow-metrics=false",
        "--allow-gpu-metrics=false",
        "--exit-timeout-secs=5",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    triton = CpuTriton(process=process, grpc_port=port, log_path=log_path)
    client = grpcclient.InferenceServerClient(url=triton.url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StandInError(f"tritonserver exited with {process.returncode}:\n{triton.log_tail()}")
            try:
                if client.is_server_ready(client_timeout=1.0):
                    return triton
            except InferenceServerException:
                pass
            time.sleep(0.2)
        triton.stop()
        raise StandInError(f"tritonserver was not ready within {timeout_s:.0f} s:\n{triton.log_tail()}")
    finally:
        client.close()
