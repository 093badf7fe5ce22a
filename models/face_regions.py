"""Eye and mouth boxes from 68 iBUG landmarks (contract.landmarks.FACE_REGIONS), batched in torch: the
region metrics of `megalive-train eval` (PSNR in the boxes, perceptual distance of their crops) and the
region-weighted L1 of the student's training read them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contract.landmarks import FACE_REGIONS, LEFT_EYE_POINTS, RIGHT_EYE_POINTS

REGION_NAMES = tuple(FACE_REGIONS)  # ("eyes", "mouth")


def inter_ocular_distance(landmarks: Tensor) -> Tensor:
    """B×68×2 -> B: the distance between the two eyes' centres (the points' means)."""
    left = landmarks[:, list(LEFT_EYE_POINTS)].mean(dim=1)  # B×2
    right = landmarks[:, list(RIGHT_EYE_POINTS)].mean(dim=1)
    return (right - left).norm(dim=1)


def region_boxes(landmarks: Tensor, *, size: int) -> Tensor:
    """B×68×2 landmarks in pixels of a size×size image -> B×R×4 integer boxes (x0, y0, x1, y1; x1, y1
    exclusive), one per REGION_NAMES, clipped to the image and at least one pixel wide and high."""
    spread = inter_ocular_distance(landmarks)  # B
    boxes = []
    for points, padding in FACE_REGIONS.values():
        region = landmarks[:, list(points)]  # B×P×2
        grow = (padding * spread).unsqueeze(1)  # B×1
        low = (region.amin(dim=1) - grow).floor()  # B×2: x0, y0
        high = (region.amax(dim=1) + grow).ceil()  # B×2: x1, y1
        low = low.clamp(0, size - 1)
        high = torch.maximum(high.clamp(1, size), low + 1)
        boxes.append(torch.cat([low, high], dim=1))  # B×4
    return torch.stack(boxes, dim=1).long()  # B×R×4


def region_masks(landmarks: Tensor, *, size: int) -> Tensor:
    """B×68×2 landmarks in pixels -> B×R×size×size masks, 1 inside each region's box."""
    boxes = region_boxes(landmarks, size=size)  # B×R×4
    axis = torch.arange(size, device=landmarks.device)
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))  # each B×R×1
    inside_x = (axis >= x0) & (axis < x1)  # B×R×W
    inside_y = (axis >= y0) & (axis < y1)  # B×R×H
    return (inside_y.unsqueeze(-1) & inside_x.unsqueeze(-2)).float()  # B×R×H×W


def region_crops(images: Tensor, landmarks: Tensor, *, size: int) -> Tensor:
    """B×C×S×S images -> B×R×C×size×size: each REGION_NAMES box of the landmarks (B×68×2 pixels) cut out and resized
    (bilinear, antialiased) to size×size, stretched to a square so every box compares alike."""
    boxes = region_boxes(landmarks, size=images.shape[-1]).tolist()  # B×R×4
    crops = [
        F.interpolate(image[None, :, y0:y1, x0:x1], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        for image, image_boxes in zip(images, boxes)
        for x0, y0, x1, y1 in image_boxes
    ]  # B·R of C×size×size
    return torch.stack(crops).view(images.shape[0], len(REGION_NAMES), images.shape[1], size, size)  # B·R×C×s×s -> B×R×C×s×s
