"""Triton python-backend model of the tests' CPU Triton (tests/server/triton_stand_in.py): copied as model.py beside
each exported model.onnx, it runs that graph in ONNX Runtime on the CPU with the inputs and outputs of the exported
config.pbtxt. The requests of one dynamic batch run as one batch when their per-sample shapes agree.

Runs inside Triton's python backend stub (triton_python_backend_utils exists only there); never imported by the suite.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        graph = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the box's other core serves the MegaLive server
        self.session = ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = [entry["name"] for entry in config["input"]]
        self.outputs = [entry["name"] for entry in config["output"]]

    def execute(self, requests: list) -> list:
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs} for request in requests]
        same_shapes = all(feed[name].shape[1:] == feeds[0][name].shape[1:] for feed in feeds for name in self.inputs)
        groups = [feeds] if same_shapes else [[feed] for feed in feeds]
        responses = []
        for group in groups:
            joined = {name: np.concatenate([feed[name] for feed in group]) for name in self.inputs}
            results = self.session.run(self.outputs, joined)
            start = 0
            for feed in group:
                size = len(feed[self.inputs[0]])
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size])) for name, result in zip(self.outputs, results)
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
                start += size
        return responses
