"""Networks that score images rather than make them: losses, metrics and the benchmark's regressor.

- ``face_descriptor``: "face (dlib ResNet)", dlib's face-recognition ResNet (128-d descriptor) in plain PyTorch,
  with a differentiable face-chip alignment; an identity loss and metric.
- ``perceptual``: "perceptual (EfficientNet-Lite0)", an ImageNet-trained EfficientNet-Lite0 giving a feature
  pyramid (perceptual distance) and a pooled vector (Fréchet distance).
- ``weights``: where their pinned weight files live (``make nets`` installs them; nothing downloads at run time).
- ``parameter_regressor``: the benchmark's regressor of the renderer's parameters (trained here, not pretrained).

Importing this package imports nothing heavy: ``python -m models.nets.weights`` checks the files without torch.
"""
