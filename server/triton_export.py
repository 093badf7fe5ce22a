"""`megalive export-triton`: an NVIDIA Triton Inference Server model repository from an avatar model's card.

Triton runs the graphs on a studio's GPU nodes; the MegaLive server keeps sessions, decoding, filters, the avatar
banks and the replies, and sends each batch there (server/triton_engine.py, `megalive serve --engine triton://…`).
What is written (OUT must not exist; it is written beside and renamed into place):

    OUT/repository/                 Triton's --model-repository
        <name>/config.pbtxt         the main graph: driver + avatar (v1) or identity (v2) -> rgb, alpha
        <name>/1/model.onnx
        <name>_<kind>/…             one per capture driver graph (arkit, landmarks), same layout
        <name>_embedder/…           a contract-v2 model's identity embedder (enrollment)
    OUT/model/                      the card and every file it names (the avatar bank, thumbnails, the graphs), as
                                    `megalive serve --model OUT/model/<stem>.onnx --engine triton://HOST:PORT` reads it

Each config.pbtxt takes the onnxruntime backend, the inputs and outputs of its graph (checked against the card: the
card's resolution, identity shape and capture inputs), the batch dimension with dynamic batching (the embedder: one
portrait set per request, its frame count varies), one instance group (``--kind gpu``: ``count`` instances on each
GPU of ``--gpus``, or on every GPU the node has when ``--gpus`` is empty; ``--kind cpu``: on the CPU), optionally the
TensorRT accelerator, and the graph's SHA-256 (parameter ``megalive_sha256``), which the MegaLive server compares with
its card's graphs so that it never drives another export's graphs with this card's avatars. A contract-v1 graph's
``avatar`` input (shape B) becomes dims [1] reshaped to [] (Triton wants a non-empty shape under a batch dimension).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contract.model_card import ModelCard, ModelCardError, file_sha256, read_model_card, sidecar_path

DIGEST_PARAMETER = "megalive_sha256"  # the config.pbtxt parameter holding the graph's SHA-256
MODEL_FILE = "model.onnx"  # Triton's default model file name for the onnxruntime backend
VERSION = "1"

# ONNX Runtime's element type names -> Triton's data types (the ones an avatar model's graphs use).
TRITON_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
}


class TritonExportError(Exception):
    """An export that cannot be written; the message is one line for the user."""


@dataclass(frozen=True, kw_only=True)
class TritonModelNames:
    """The Triton model name of each graph of one avatar model (export-triton writes them, the engine calls them)."""

    main: str
    adapters: dict[str, str]  # capture kind -> model name
    embedder: str | None


def triton_name(text: str) -> str:
    """A model name Triton and every file system take: letters, digits, '_', '-' and '.' (others become '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip(".") or "model"


def triton_model_names(card: ModelCard, *, base: str | None = None) -> TritonModelNames:
    main = triton_name(base or card.name)
    return TritonModelNames(
        main=main,
        adapters={adapter.kind: f"{main}_{triton_name(adapter.kind)}" for adapter in card.adapters},
        embedder=None if card.enrollment is None else f"{main}_embedder",
    )


@dataclass(frozen=True, kw_only=True)
class TritonExportConfig:
    model_path: Path
    out_dir: Path
    name: str | None = None  # the main graph's Triton model name; None: the card's name
    max_batch: int = 8  # Triton's max_batch_size: at least the MegaLive server's --max-batch
    queue_delay_us: int = 500  # dynamic batching: how long Triton holds a request to fill a batch
    kind: str = "gpu"  # instance group kind: gpu | cpu
    gpus: tuple[int, ...] = ()  # the GPUs to place instances on; empty: every GPU of the node
    instances: int = 1  # instances per GPU (or on the CPU)
    tensorrt: str = "off"  # off | fp32 | fp16: ONNX Runtime's TensorRT accelerator inside Triton's backend


@dataclass(frozen=True, kw_only=True)
class TritonTensor:
    name: str
    data_type: str  # TYPE_FP32, …
    dims: tuple[int, ...]  # without the batch dimension; -1: any
    reshape: tuple[int, ...] | None = None  # what the graph takes per sample, when it differs from dims


@dataclass(frozen=True, kw_only=True)
class TritonModel:
    name: str
    graph: Path  # the card's graph it was copied from
    max_batch_size: int
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    dynamic_batching: bool
    sha256: str


@dataclass(frozen=True, kw_only=True)
class TritonExport:
    repository: Path
    model_path: Path  # the card's copy the MegaLive server reads (OUT/model/<stem>.onnx)
    models: tuple[TritonModel, ...]
    notes: tuple[str, ...]  # what the user should know (a teacher's 5-D warps, ...)


def check_config(config: TritonExportConfig) -> None:
    """ValueError (one line) for an option out of range."""
    if not 1 <= config.max_batch <= 1024:
        raise ValueError("--max-batch must be between 1 and 1024")
    if not 0 <= config.queue_delay_us <= 1_000_000:
        raise ValueError("--queue-delay-us must be between 0 and 1000000")
    if config.kind not in ("gpu", "cpu"):
        raise ValueError(f"--kind must be gpu or cpu, not {config.kind!r}")
    if config.kind == "cpu" and config.gpus:
        raise ValueError("--gpus goes with --kind gpu")
    if config.kind == "cpu" and config.tensorrt != "off":
        raise ValueError("--tensorrt needs --kind gpu")
    if any(gpu < 0 for gpu in config.gpus) or len(set(config.gpus)) != len(config.gpus):
        raise ValueError("--gpus takes distinct GPU indices, e.g. 0,1")
    if not 1 <= config.instances <= 64:
        raise ValueError("--instances must be between 1 and 64")
    if config.tensorrt not in ("off", "fp32", "fp16"):
        raise ValueError(f"--tensorrt must be off, fp32 or fp16, not {config.tensorrt!r}")


def _graph_tensors(path: Path) -> tuple[dict[str, tuple[str, list[int | str | None]]], dict[str, tuple[str, list[int | str | None]]]]:
    """(inputs, outputs) of an ONNX graph: name -> (element type, shape with symbolic dimensions as names)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types from C++
        raise TritonExportError(f"cannot read {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    return (
        {arg.name: (arg.type, list(arg.shape)) for arg in session.get_inputs()},
        {arg.name: (arg.type, list(arg.shape)) for arg in session.get_outputs()},
    )


def _tensor(path: Path, name: str, graph: tuple[str, list[int | str | None]], expected: tuple[int, ...] | None) -> TritonTensor:
    """One input or output of a batched graph as Triton declares it: the graph's shape without its batch axis, the
    card's ``expected`` shape where the graph leaves a dimension symbolic; TritonExportError when the two disagree."""
    element, shape = graph
    if element not in TRITON_TYPES:
        raise TritonExportError(f"{path.name}: {name} is {element}; Triton export takes {', '.join(TRITON_TYPES)}")
    per_sample = [n if isinstance(n, int) else -1 for n in shape[1:]]
    if expected is not None:
        if len(expected) != len(per_sample) or any(g not in (-1, e) for g, e in zip(per_sample, expected)):
            raise TritonExportError(f"{path.name}: {name} has shape {shape}, the card says B×{'×'.join(map(str, expected))}")
        per_sample = list(expected)
    if not per_sample:  # a scalar per sample (v1's avatar index): Triton wants [1] under the batch dimension
        return TritonTensor(name=name, data_type=TRITON_TYPES[element], dims=(1,), reshape=())
    return TritonTensor(name=name, data_type=TRITON_TYPES[element], dims=tuple(per_sample))


def _describe(
    *,
    name: str,
    path: Path,
    inputs: dict[str, tuple[int, ...] | None],
    outputs: dict[str, tuple[int, ...] | None],
    max_batch_size: int,
    dynamic_batching: bool,
) -> TritonModel:
    """A graph's Triton model: the named inputs and outputs (with the card's shapes, None: the graph's own)."""
    graph_inputs, graph_outputs = _graph_tensors(path)
    if set(graph_inputs) != set(inputs) or not set(outputs) <= set(graph_outputs):
        raise TritonExportError(
            f"{path.name} takes {sorted(graph_inputs)} and gives {sorted(graph_outputs)}; "
            f"its card entry says {sorted(inputs)} -> {sorted(outputs)}"
        )
    return TritonModel(
        name=name,
        graph=path,
        max_batch_size=max_batch_size,
        inputs=tuple(_tensor(path, key, graph_inputs[key], shape) for key, shape in inputs.items()),
        outputs=tuple(_tensor(path, key, graph_outputs[key], shape) for key, shape in outputs.items()),
        dynamic_batching=dynamic_batching,
        sha256=file_sha256(path),
    )


def describe_models(card: ModelCard, config: TritonExportConfig) -> tuple[TritonModel, ...]:
    """Every graph of the card as a Triton model, checked against the card."""
    names = triton_model_names(card, base=config.name)
    height, width = card.resolution
    enrollment = card.enrollment
    who: dict[str, tuple[int, ...] | None] = {"avatar": ()} if enrollment is None else {"identity": enrollment.identity_shape}
    pictures: dict[str, tuple[int, ...] | None] = {"rgb": (3, height, width), "alpha": (1, height, width)}
    batched = {"max_batch_size": config.max_batch, "dynamic_batching": True}
    models = [_describe(name=names.main, path=card.model_path, inputs={"driver": (3, height, width), **who}, outputs=pictures, **batched)]
    for adapter in card.adapters:
        outputs = pictures if adapter.outputs == ("rgb", "alpha") else {"landmarks": (68, 2)}
        models.append(
            _describe(
                name=names.adapters[adapter.kind],
                path=adapter.model_path,
                inputs={adapter.input_name: adapter.input_shape, **who},
                outputs=outputs,
                **batched,
            )
        )
    if enrollment is not None and names.embedder is not None:
        # One person's K portraits per request (1×K×3×H×W); K varies, so requests are not batched together.
        models.append(
            _describe(
                name=names.embedder,
                path=enrollment.embedder_path,
                inputs={"frames": (-1, 3, height, width)},
                outputs={"identity": enrollment.identity_shape},
                max_batch_size=1,
                dynamic_batching=False,
            )
        )
    return tuple(models)


def _dims(values: tuple[int, ...]) -> str:
    return "[ " + ", ".join(map(str, values)) + " ]"


def _tensor_text(tensor: TritonTensor) -> str:
    lines = [f'    name: "{tensor.name}"', f"    data_type: {tensor.data_type}", f"    dims: {_dims(tensor.dims)}"]
    if tensor.reshape is not None:
        lines.append(f"    reshape: {{ shape: {_dims(tensor.reshape)} }}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def model_config_text(model: TritonModel, config: TritonExportConfig) -> str:
    """The model's config.pbtxt (protobuf text format of Triton's ModelConfig)."""
    parts = [
        f'name: "{model.name}"',
        'backend: "onnxruntime"',
        f'default_model_filename: "{MODEL_FILE}"',
        f"max_batch_size: {model.max_batch_size}",
        "input [\n" + ",\n".join(_tensor_text(t) for t in model.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_text(t) for t in model.outputs) + "\n]",
    ]
    if model.dynamic_batching:
        parts.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {config.queue_delay_us}\n}}")
    group = [f"    count: {config.instances}", f"    kind: KIND_{config.kind.upper()}"]
    if config.gpus:
        group.append(f"    gpus: {_dims(config.gpus)}")
    parts.append("instance_group [\n  {\n" + "\n".join(group) + "\n  }\n]")
    if config.tensorrt != "off" and model.dynamic_batching:  # the real-time graphs; the embedder's portrait count varies
        parts.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
            '        name: "tensorrt"\n'
            f'        parameters {{ key: "precision_mode" value: "{config.tensorrt.upper()}" }}\n'
            "      }\n    ]\n  }\n}"
        )
    parts.append(f'parameters {{\n  key: "{DIGEST_PARAMETER}"\n  value: {{ string_value: "{model.sha256}" }}\n}}')
    return "\n".join(parts) + "\n"


def card_files(card: ModelCard) -> list[Path]:
    """Every file the card names, the sidecar included: what the MegaLive server beside Triton reads."""
    files = [card.model_path, sidecar_path(card.model_path), *(adapter.model_path for adapter in card.adapters)]
    if card.thumbnails_path is not None and card.thumbnails_path.is_file():
        files.append(card.thumbnails_path)
    if card.enrollment is not None:
        files += [card.enrollment.bank_path, card.enrollment.embedder_path]
        if card.enrollment.weights_path is not None:
            files.append(card.enrollment.weights_path)
    return files


def export_triton_repository(config: TritonExportConfig) -> TritonExport:
    """Write OUT/repository and OUT/model (see the module's docstring). TritonExportError or ValueError, one line."""
    check_config(config)
    try:
        card = read_model_card(config.model_path)
    except ModelCardError as error:
        raise TritonExportError(str(error)) from None
    out = config.out_dir
    if out.exists():
        raise TritonExportError(f"{out} exists; choose another --out (export-triton never writes over a repository)")
    models = describe_models(card, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        for model in models:
            folder = staging / "repository" / model.name
            (folder / VERSION).mkdir(parents=True)
            shutil.copyfile(model.graph, folder / VERSION / MODEL_FILE)
            (folder / "config.pbtxt").write_text(model_config_text(model, config), encoding="utf-8")
        (staging / "model").mkdir()
        for path in card_files(card):
            shutil.copyfile(path, staging / "model" / path.name)
        copy = staging / "model" / card.model_path.name
        read_model_card(copy)  # the copy is a whole card: every file it names is there with its digest
        os.chmod(staging, 0o755)  # mkdtemp makes it private; a repository is shared data
        os.replace(staging, out)
    except (OSError, ModelCardError) as error:
        raise TritonExportError(f"cannot write {out}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    notes = []
    if card.teacher is not None:
        notes.append(
            "a MegaPortraits teacher warps with 5-D grid_sample; ONNX Runtime's CUDA provider has no 5-D GridSample kernel "
            "(DESIGN §6), so those nodes would run on the GPU node's CPU: measure before serving a teacher this way"
        )
    return TritonExport(repository=out / "repository", model_path=out / "model" / card.model_path.name, models=models, notes=tuple(notes))


def add_export_triton(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export-triton",
        help="write an NVIDIA Triton model repository from an avatar model (for serve --engine triton://)",
        description="Write OUT/repository (Triton's --model-repository: each graph of the model with its config.pbtxt, "
        "onnxruntime backend, dynamic batching, one instance group) and OUT/model (the model card with its avatar bank, "
        "for `megalive serve --model OUT/model/<stem>.onnx --engine triton://HOST:8001`). Exit status 2 for a bad model "
        "or options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    export.add_argument("--model", type=Path, default=None, metavar="PATH", help="avatar model .onnx; default: the shipped model")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (must not exist)")
    export.add_argument("--name", default=None, metavar="NAME", help="Triton model name of the main graph; default: the card's name")
    export.add_argument("--max-batch", type=int, default=8, metavar="N", help="Triton max_batch_size; ≥ serve --max-batch [1-1024]")
    export.add_argument(
        "--queue-delay-us", type=int, default=500, metavar="US", help="dynamic batching: longest wait to fill a batch [0-1000000]"
    )
    export.add_argument("--kind", default="gpu", choices=("gpu", "cpu"), help="instance group kind")
    export.add_argument(
        "--gpus",
        default="",
        metavar="LIST",
        help="comma-separated GPU indices to place instances on (e.g. 0,1); empty: every GPU of the node",
    )
    export.add_argument("--instances", type=int, default=1, metavar="N", help="model instances per GPU (or on the CPU) [1-64]")
    export.add_argument(
        "--tensorrt",
        default="off",
        choices=("off", "fp32", "fp16"),
        help="ONNX Runtime's TensorRT accelerator in Triton, at this precision",
    )
    export.add_argument("--dry-run", action="store_true", help="print each graph's config.pbtxt and write nothing")
    export.set_defaults(run=_export_triton)


def _export_triton(args: argparse.Namespace) -> int:
    from server.engine import ModelError, model_or_shipped

    try:
        gpus = tuple(int(n) for n in args.gpus.split(",") if n.strip())
    except ValueError:
        print(f"megalive export-triton: --gpus takes comma-separated GPU indices, not {args.gpus!r}", file=sys.stderr)
        return 2
    try:
        config = TritonExportConfig(
            model_path=model_or_shipped(args.model),
            out_dir=args.out,
            name=args.name,
            max_batch=args.max_batch,
            queue_delay_us=args.queue_delay_us,
            kind=args.kind,
            gpus=gpus,
            instances=args.instances,
            tensorrt=args.tensorrt,
        )
        if args.dry_run:
            check_config(config)
            card = read_model_card(config.model_path)
            for model in describe_models(card, config):
                print(f"# {config.out_dir / 'repository' / model.name / 'config.pbtxt'}\n{model_config_text(model, config)}")
            return 0
        export = export_triton_repository(config)
    except (TritonExportError, ModelError, ModelCardError, ValueError) as error:
        print(f"megalive export-triton: {error}", file=sys.stderr)
        return 2
    print(f"wrote the Triton model repository {export.repository}: {', '.join(m.name for m in export.models)}")
    print(f"wrote the model card with its avatar bank {export.model_path}")
    for note in export.notes:
        print(f"note: {note}")
    print(
        f"next: tritonserver --model-repository {export.repository} on each GPU node, then "
        f"megalive serve --model {export.model_path} --engine triton://NODE:8001"
    )
    return 0
