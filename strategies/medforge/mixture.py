"""MedForge-Mixture: keep every adapter and mix their predictions, in output space.

q(y|x) = Σ_j c_j · softmax(f_j(x)), clipped at `FLOOR` (coefficients may be negative: the search
bounds allow it). Predictions are q renormalised per row. The searched loss is the generalised
Kullback-Leibler divergence of the one-hot label from q, -log q_y + Σ_k q_k - 1: equal to the
cross-entropy when q sums to one, and not blind to the scale of the coefficients (a plain
renormalised cross-entropy is, so the L1 term would shrink every coefficient towards zero).
The reference code instead applied CrossEntropyLoss to these probabilities (a second softmax).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FLOOR = 1e-6


def mixture_scores(component_probabilities: Sequence[Tensor], coefficients: Sequence[float]) -> Tensor:
    """q = Σ_j c_j p_j, clipped at FLOOR; not renormalised."""
    if len(component_probabilities) != len(coefficients) or not coefficients:
        raise ValueError(f"got {len(component_probabilities)} components and {len(coefficients)} coefficients; pass one coefficient per adapter (at least one).")
    return sum(c * p for c, p in zip(coefficients, component_probabilities)).clamp_min(FLOOR)


def mixture_probabilities(component_probabilities: Sequence[Tensor], coefficients: Sequence[float]) -> Tensor:
    """The mixture's prediction: q renormalised per row."""
    q = mixture_scores(component_probabilities, coefficients)
    return q / q.sum(dim=-1, keepdim=True)


def mixture_loss(scores: Tensor, labels: Tensor) -> float:
    """Mean generalised KL divergence -log q_y + Σ_k q_k - 1 (labels (N,) or (N, 1) class indices)."""
    labels = labels.reshape(-1).long()
    return float((-torch.log(scores[torch.arange(len(labels)), labels]) + scores.sum(dim=-1) - 1).mean())
