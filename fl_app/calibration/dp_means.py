"""Differentially private class means of real embeddings: the only way DP distillation reads patients.

Each real embedding is clipped to norm C and extended with one constant coordinate C (so the count
travels in the same vector); per class, the sum of these vectors gets Gaussian noise of std σ·√2·C,
the L2 sensitivity of adding or removing one patient (a record changes one class's sum by at most
√(C² + C²)). The noisy mean is noisy sum / noisy count. Every class of the task is released, present
or not, so which classes a hospital has is not revealed either. Records are Poisson-sampled at rate q
per iteration, which is what the subsampled-Gaussian RDP accountant assumes.

Follows the noisy-mean-embedding form of distribution matching used for differentially private
dataset condensation (Zheng & Li, "Differentially Private Dataset Condensation", NDSS 2024
workshop AISCC; DM itself: Zhao & Bilen, WACV 2023); the images are then DP by post-processing.
"""

from __future__ import annotations

import math

import torch


def clip_rows(rows: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale every row of (N, D) down to L2 norm <= max_norm (rows already inside are unchanged)."""
    norms = rows.norm(dim=1, keepdim=True)
    return rows * (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)


def noisy_class_means(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    max_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> dict[int, torch.Tensor]:
    """{class: DP mean embedding} for every class 0..n_classes-1, from (N, D) embeddings and (N,) labels."""
    clipped = clip_rows(embeddings.detach().float(), max_norm)
    extended = torch.cat([clipped, torch.full((len(clipped), 1), float(max_norm))], dim=1)
    std = noise_multiplier * math.sqrt(2.0) * max_norm
    means = {}
    for c in range(n_classes):
        total = extended[labels == c].sum(dim=0)
        noisy = total + std * torch.randn(total.shape, generator=generator)
        count = max(float(noisy[-1]) / max_norm, 1.0)
        means[c] = noisy[:-1] / count
    return means
