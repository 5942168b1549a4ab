"""Differentiable Siamese augmentation (Zhao & Bilen, "Dataset Condensation with Differentiable
Siamese Augmentation", ICML 2021): one random transform drawn per step and applied identically to
the real and the synthetic batch, so matching their embeddings teaches content, not pose.

Pure tensor functions on images (N, C, H, W) in [0, 1]; gradients flow to the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the transform: flip, scale, rotation (radians), shift (fraction of size), colour."""

    flip: bool
    scale: float
    angle: float
    shift_x: float
    shift_y: float
    brightness: float
    contrast: float


def sample_augment(generator: torch.Generator) -> AugmentParams:
    """Ranges follow DSA's defaults, scaled down for small medical images."""
    u = torch.rand(7, generator=generator).tolist()
    return AugmentParams(
        flip=u[0] < 0.5,
        scale=0.85 + 0.3 * u[1],
        angle=math.radians(-15 + 30 * u[2]),
        shift_x=-0.125 + 0.25 * u[3],
        shift_y=-0.125 + 0.25 * u[4],
        brightness=-0.2 + 0.4 * u[5],
        contrast=0.8 + 0.4 * u[6],
    )


def augment(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply `params` to every image of the batch (the same transform for all)."""
    if params.flip:
        images = images.flip(-1)
    # scale, rotate, shift: one affine resampling
    cos, sin = math.cos(params.angle) / params.scale, math.sin(params.angle) / params.scale
    theta = images.new_tensor([[cos, -sin, params.shift_x], [sin, cos, params.shift_y]]).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # colour
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * params.contrast + mean + params.brightness
