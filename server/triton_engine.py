"""The engine of `megalive serve --engine triton://HOST:PORT[/NAME]`: the graphs run on an NVIDIA Triton Inference
Server, reached over gRPC with tritonclient; everything else stays in this process.

TritonEngine is server/engine.py's Engine with the graphs elsewhere: the card, the avatar banks (the shipped and the
enrolled identity tensors, looked up here and sent with each batch), landmark drawing, chunking by ``max_batch`` and
the counters are the in-process engine's own code. The repository is the one `megalive export-triton` wrote from the
same card (server/triton_export.py): model NAME (default: the card's name), NAME_<kind> per capture graph,
NAME_embedder. At start the engine checks that Triton serves each of them, that each graph's SHA-256 (the config's
``megalive_sha256``) is the card's, and that Triton batches at least ``max_batch``; then it warms every graph up.

A Triton that is gone, stopping, or silent past ``timeout_s`` makes each engine call raise TritonError (one line):
the server's engine thread answers that batch's frames with errors and goes on; when Triton is back, the next
batch goes through (the gRPC channel reconnects; its backoff is capped at ``RECONNECT_BACKOFF_MAX_MS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from contract.model_card import file_sha256
from server.engine import Engine, ModelError
from server.triton_export import DIGEST_PARAMETER, triton_model_names

ENGINE_SCHEME = "triton"
RECONNECT_BACKOFF_MAX_MS = 2000  # gRPC's default grows to 120 s: a Triton restarted would wait that long for traffic


class TritonError(RuntimeError):
    """A Triton call that failed (gone, stopping, timed out, refused); the message is one line."""


@dataclass(frozen=True, kw_only=True)
class TritonAddress:
    host: str
    port: int
    model: str | None = None  # the main graph's Triton model name; None: the card's name

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{ENGINE_SCHEME}://{self.url}" + (f"/{self.model}" if self.model else "")


def parse_engine_address(text: str) -> TritonAddress:
    """``triton://HOST:PORT`` or ``triton://HOST:PORT/NAME`` -> TritonAddress; ValueError (one line) otherwise."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != ENGINE_SCHEME or not parts.hostname or port is None or parts.query or parts.fragment:
        raise ValueError(f"--engine {text!r}: expected triton://HOST:PORT or triton://HOST:PORT/NAME (Triton's gRPC port, 8001 by default)")
    name = parts.path.strip("/") or None
    if name is not None and "/" in name:
        raise ValueError(f"--engine {text!r}: NAME is one Triton model name")
    return TritonAddress(host=parts.hostname, port=port, model=name)


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class TritonTensorInfo:
    """An input or output as ONNX Runtime's NodeArg shows it (name, shape with "batch" first, type)."""

    name: str
    shape: list[int | str]
    type: str


class TritonGraph:
    """One model on a Triton server, offering the part of onnxruntime.InferenceSession that the engine uses."""

    def __init__(self, *, client: Any, address: TritonAddress, model_name: str, graph_path: Path, timeout_s: float, max_batch: int) -> None:
        from tritonclient.utils import InferenceServerException

        self._client = client
        self._exception = InferenceServerException
        self.address = address
        self.model_name = model_name
        self.timeout_s = timeout_s
        where = f"Triton at {address.url}"
        try:
            if not client.is_model_ready(model_name, client_timeout=timeout_s):
                raise TritonError(f"{where} has model {model_name!r} but it is not ready (see Triton's log)")
            metadata = client.get_model_metadata(model_name, as_json=True, client_timeout=timeout_s)
            config = client.get_model_config(model_name, as_json=True, client_timeout=timeout_s)["config"]
        except InferenceServerException as error:
            raise TritonError(f"{where}: model {model_name!r}: {_one_line(error)} (is the export-triton repository loaded?)") from None
        digest = config.get("parameters", {}).get(DIGEST_PARAMETER, {}).get("string_value")
        if digest != file_sha256(graph_path):
            raise TritonError(
                f"{where} serves another graph as {model_name!r} than {graph_path.name} (SHA-256 differs or is missing): "
                "load the repository export-triton wrote from this model"
            )
        batch_limit = int(config.get("max_batch_size", 0))
        self.batched = batch_limit > 0
        if batch_limit < max_batch:
            raise TritonError(
                f"{where}: {model_name!r} batches at most {batch_limit}, the server sends up to {max_batch} (lower --max-batch)"
            )
        self._reshaped = {i["name"] for i in config.get("input", []) if "reshape" in i}  # v1's avatar: B -> B×1 on the wire
        self._inputs = [self._tensor(entry) for entry in metadata["inputs"]]
        self._outputs = [self._tensor(entry) for entry in metadata["outputs"]]
        self._types = {entry["name"]: entry["datatype"] for entry in metadata["inputs"]}

    def _tensor(self, entry: dict[str, Any]) -> TritonTensorInfo:
        shape: list[int | str] = [int(n) for n in entry["shape"]]
        if self.batched:
            shape = ["batch", *shape[1:]] if shape and shape[0] == -1 else ["batch", *shape]
        if entry["name"] in self._reshaped:
            shape = ["batch"]  # the graph's own shape: one index per sample
        return TritonTensorInfo(name=entry["name"], shape=shape, type=entry["datatype"])

    def get_inputs(self) -> list[TritonTensorInfo]:
        return self._inputs

    def get_outputs(self) -> list[TritonTensorInfo]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return [f"{ENGINE_SCHEME}://{self.address.url}/{self.model_name}"]

    def run(self, output_names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        from tritonclient import grpc as grpcclient

        inputs = []
        for name, array in feed.items():
            array = np.ascontiguousarray(array)
            if name in self._reshaped:
                array = array.reshape(len(array), 1)
            item = grpcclient.InferInput(name, list(array.shape), self._types.get(name, "FP32"))
            item.set_data_from_numpy(array)
            inputs.append(item)
        requested = [grpcclient.InferRequestedOutput(name) for name in output_names]
        try:
            result = self._client.infer(self.model_name, inputs, outputs=requested, client_timeout=self.timeout_s)
        except self._exception as error:
            raise TritonError(f"Triton at {self.address.url}, model {self.model_name!r}: {_one_line(error)}") from None
        return [result.as_numpy(name) for name in output_names]


class TritonEngine(Engine):
    """Engine whose graphs run on Triton (see the module's docstring); the same interface as the in-process one."""

    def __init__(
        self,
        *,
        model_path: str | Path,
        address: TritonAddress,
        timeout_s: float = 10.0,
        max_batch: int = 8,
        warmup: bool = True,
        bank_path: str | Path | None = None,
    ) -> None:
        try:
            from tritonclient import grpc as grpcclient
        except ImportError:
            raise ModelError("--engine triton:// needs tritonclient: pip install 'megalive[triton]'") from None
        if not timeout_s > 0:
            raise ModelError("the Triton timeout must be a positive number of seconds")
        self.address = address
        self.timeout_s = timeout_s
        keepalive = grpcclient.KeepAliveOptions()
        self._client = grpcclient.InferenceServerClient(
            url=address.url,
            channel_args=[
                ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
                ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
            ],
        )
        try:
            super().__init__(model_path=model_path, max_batch=max_batch, warmup=warmup, bank_path=bank_path)
        except TritonError as error:
            self._client.close()
            raise ModelError(str(error)) from None

    def _open_graphs(self) -> tuple[Any, dict[str, Any], Any | None]:
        from tritonclient.utils import InferenceServerException

        try:
            live = self._client.is_server_live(client_timeout=self.timeout_s)
        except InferenceServerException as error:
            raise TritonError(f"cannot reach Triton at {self.address.url}: {_one_line(error)}") from None
        if not live:
            raise TritonError(f"Triton at {self.address.url} answers but is not live")
        names = triton_model_names(self.card, base=self.address.model)

        def graph(name: str, path: Path, *, max_batch: int) -> TritonGraph:
            return TritonGraph(
                client=self._client, address=self.address, model_name=name, graph_path=path, timeout_s=self.timeout_s, max_batch=max_batch
            )

        main = graph(names.main, self.card.model_path, max_batch=self.max_batch)
        signals = {
            adapter.kind: graph(names.adapters[adapter.kind], adapter.model_path, max_batch=self.max_batch)
            for adapter in self.card.adapters
        }
        enrollment = self.card.enrollment
        # The embedder takes one person's portraits per call (Engine.embed: 1×K×3×H×W).
        embedder = None if enrollment is None or names.embedder is None else graph(names.embedder, enrollment.embedder_path, max_batch=1)
        return main, signals, embedder

    def close(self) -> None:
        self._client.close()
