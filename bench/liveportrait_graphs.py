"""The torch side of bench/liveportrait_speed.py: LivePortrait's networks built from a checkout, MegaLive's students,
each as a graph that PyTorch runs (and, exported to ONNX, ONNX Runtime), and the timing in rounds.

A module of its own so that the command answers bad input before torch loads (seconds on a busy two-core box).
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from models.megaportraits.student import IdentityInputStudent, Student, student_config

INPUT_SIZE = 256  # LivePortrait's crop (input_shape in its src/config/inference_config.py)
KEYPOINT_SPAN = 0.8  # the random keypoints lie in [-0.8, 0.8]³ of the volume's normalised coordinates
OPSET = 20  # 5-D GridSample (the warping module) needs opset 20

Call = Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, ...]]
Runner = Callable[[], object]


class LivePortraitImportError(Exception):
    """A network's module or class is not in the checkout where LivePortrait keeps it."""


@dataclass(frozen=True)
class NetworkSource:
    module: str  # under src/modules
    class_name: str
    params: Mapping[str, Any]  # its constructor's parameters (models.yaml)


@dataclass(frozen=True)
class Timing:
    network: str  # the row's label
    runtime: str  # "pytorch" | "onnxruntime"
    family: str  # "liveportrait" | "student"
    key: str  # LivePortrait's network key (models.yaml), or the student preset
    per_frame: bool  # part of a frame's cost (LivePortrait's appearance feature extractor runs once per source)
    ms_by_round: tuple[float, ...]  # ms per call, one figure per round (one figure in all when not per frame)


@dataclass(frozen=True)
class Measurement:
    timings: list[Timing]
    not_exported: dict[str, str]  # network -> why it has no ONNX Runtime timing
    torch_version: str
    onnxruntime_version: str | None


def liveportrait_classes(folder: Path, sources: Mapping[str, NetworkSource]) -> dict[str, type[nn.Module]]:
    """LivePortrait's network classes, imported from its own modules in the checkout."""
    sys.path.insert(0, str(folder))  # its modules import each other as the package `src.modules`
    classes = {}
    for key, source in sources.items():
        try:
            classes[key] = getattr(importlib.import_module(f"src.modules.{source.module}"), source.class_name)
        except (ImportError, AttributeError) as error:
            raise LivePortraitImportError(
                f"cannot import {source.class_name} from {folder}/src/modules/{source.module}.py: {error}"
            ) from None
    return classes


class Adapter(nn.Module):
    """A network called as its pipeline calls it (keyword names, dict outputs), taking and returning plain tensors:
    what an ONNX graph takes and returns, and exactly the work timed in PyTorch."""

    def __init__(self, *, network: nn.Module, call: Call) -> None:
        super().__init__()
        self.network = network
        self.call = call

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return self.call(self.network, inputs)


@dataclass(frozen=True)
class Graph:
    name: str
    family: str
    key: str
    per_frame: bool
    adapter: Adapter
    inputs: dict[str, Tensor]


def shape_text(tensor: Tensor) -> str:
    return "×".join(map(str, tensor.shape[1:]))


def liveportrait_graphs(networks: Mapping[str, nn.Module], *, num_kp: int, per_frame: Sequence[str]) -> list[Graph]:
    """The four networks fed as LivePortrait's pipeline feeds them (its live_portrait_wrapper.py)."""
    generator = torch.Generator().manual_seed(0)
    crop = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE, generator=generator)  # B×3×256×256 in [0, 1]
    keypoints = [(torch.rand(1, num_kp, 3, generator=generator) * 2 - 1) * KEYPOINT_SPAN for _ in range(2)]  # source, driving: B×21×3
    with torch.inference_mode():
        volume = networks["appearance_feature_extractor"](crop)  # B×32×16×64×64 with LivePortrait's config
        warped = networks["warping_module"](volume, kp_driving=keypoints[1], kp_source=keypoints[0])["out"]  # B×256×64×64
        image = networks["spade_generator"](feature=warped)  # B×3×512×512
    calls: dict[str, tuple[str, Call, dict[str, Tensor]]] = {
        "appearance_feature_extractor": (
            f"LivePortrait appearance feature extractor F, once per source ({INPUT_SIZE}² -> {shape_text(volume)})",
            lambda network, x: (network(x[0]),),
            {"source": crop},
        ),
        "motion_extractor": (
            f"LivePortrait motion extractor M (driver {INPUT_SIZE}²)",
            lambda network, x: tuple(value for _, value in sorted(network(x[0]).items())),  # its dict, in key order
            {"driver": crop},
        ),
        "warping_module": (
            f"LivePortrait warping module W ({shape_text(volume)} -> {shape_text(warped)})",
            lambda network, x: (network(x[0], kp_driving=x[1], kp_source=x[2])["out"],),  # what the generator reads
            {"feature_3d": volume, "kp_driving": keypoints[1], "kp_source": keypoints[0]},
        ),
        "spade_generator": (
            f"LivePortrait SPADE generator G (-> {shape_text(image)})",
            lambda network, x: (network(feature=x[0]),),
            {"feature": warped},
        ),
    }
    return [
        Graph(name, "liveportrait", key, key in per_frame, Adapter(network=networks[key], call=call).eval(), inputs)
        for key, (name, call, inputs) in calls.items()
    ]


def student_graph(preset: str) -> Graph:
    """The student as the server runs it (model contract v2: driver and identity tensor in, rgb and alpha out)."""
    torch.manual_seed(0)
    student = Student(config=student_config(preset, num_avatars=1)).eval()
    size = student.config.resolution
    inputs = {"driver": torch.rand(1, 3, size, size), "identity": student.identity.detach()[:1].clone()}  # B×C_id×S×S
    adapter = Adapter(network=IdentityInputStudent(student=student), call=lambda network, x: tuple(network(x[0], x[1]))).eval()
    return Graph(f"MegaLive student {preset} ({size}×{size} out)", "student", preset, True, adapter, inputs)


def pytorch_runner(graph: Graph) -> Runner:
    inputs = tuple(graph.inputs.values())

    def run() -> object:
        with torch.inference_mode():
            return graph.adapter(*inputs)

    return run


def onnx_runner(graph: Graph, folder: Path, *, threads: int) -> Runner:
    """The graph exported to ONNX (opset 20, the TorchScript exporter as models/export.py uses it) and opened in ONNX
    Runtime on the CPU with ``threads`` intra-op threads; raises whatever the exporter or ONNX Runtime raises."""
    import onnxruntime as ort

    path = folder / f"{graph.family}-{graph.key}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings about the networks' Python control flow
        torch.onnx.export(
            graph.adapter, tuple(graph.inputs.values()), str(path), input_names=list(graph.inputs), opset_version=OPSET, dynamo=False
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    feed = {name: tensor.numpy() for name, tensor in graph.inputs.items()}
    session.run(None, feed)  # a graph that exports but does not run fails here, before any timing

    def run() -> object:
        return session.run(None, feed)

    return run


def ms_per_call(run: Runner, *, calls: int) -> float:
    """Mean wall time of one call over ``calls`` calls, in ms."""
    began = time.perf_counter()
    for _ in range(calls):
        run()
    return 1000.0 * (time.perf_counter() - began) / calls


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def measure(
    *,
    folder: Path,
    sources: Mapping[str, NetworkSource],
    per_frame: Sequence[str],
    num_kp: int,
    presets: Sequence[str],
    threads: int,
    rounds: int,
    student_frames: int,
    warmup: int,
    onnx: bool,
) -> Measurement:
    """Every graph on every runtime: ``warmup`` untimed calls each, the once-per-source network once, then ``rounds``
    rounds of one LivePortrait frame (each per-frame network once) and ``student_frames`` frames of each student."""
    torch.set_num_threads(threads)
    classes = liveportrait_classes(folder, sources)
    print(f"building LivePortrait's networks from {folder} (random weights) and the students {', '.join(presets)}", file=sys.stderr)
    networks = {key: network_class(**sources[key].params).eval() for key, network_class in classes.items()}
    graphs = liveportrait_graphs(networks, num_kp=num_kp, per_frame=per_frame)
    graphs += [student_graph(preset) for preset in presets]
    by_name = {graph.name: graph for graph in graphs}

    runners: dict[tuple[str, str], Runner] = {(graph.name, "pytorch"): pytorch_runner(graph) for graph in graphs}
    not_exported: dict[str, str] = {}
    onnxruntime_version = None
    with tempfile.TemporaryDirectory(prefix="liveportrait-speed-") as scratch:
        if onnx:
            import onnxruntime as ort

            onnxruntime_version = ort.__version__
            for graph in tqdm(graphs, desc="exporting to ONNX", file=sys.stderr):
                try:
                    runners[(graph.name, "onnxruntime")] = onnx_runner(graph, Path(scratch), threads=threads)
                except Exception as error:  # third-party networks: any exporter or runtime failure is a finding to print
                    not_exported[graph.name] = first_line(error)
        for _ in tqdm(range(warmup), desc="warm-up", file=sys.stderr):
            for run in runners.values():
                run()
        times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
        for (name, runtime), run in runners.items():
            if not by_name[name].per_frame:
                times[(name, runtime)].append(ms_per_call(run, calls=1))
        for _ in tqdm(range(rounds), desc="rounds", file=sys.stderr):
            for (name, runtime), run in runners.items():
                graph = by_name[name]
                if graph.per_frame:
                    times[(name, runtime)].append(ms_per_call(run, calls=student_frames if graph.family == "student" else 1))
    timings = [
        Timing(
            network=name,
            runtime=runtime,
            family=by_name[name].family,
            key=by_name[name].key,
            per_frame=by_name[name].per_frame,
            ms_by_round=tuple(ms),
        )
        for (name, runtime), ms in times.items()
    ]
    return Measurement(timings=timings, not_exported=not_exported, torch_version=torch.__version__, onnxruntime_version=onnxruntime_version)
