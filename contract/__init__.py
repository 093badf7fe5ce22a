"""MegaLive's shared vocabulary (DESIGN §1): ARKit curve names, the 68-point landmark tables and the
crop-box math, the model card (the JSON sidecar beside an exported .onnx).

One copy of each, imported by client, server, models and (through their vendored copies) the
Blender and Unreal hosts. This package imports nothing of ours; at module level only the standard
library (numpy is imported inside the functions that need it), because the hosts ship it as is.
"""
