"""Model Stock on LoRA updates, from the factors: the average ΔW pulled towards the base by the updates' angle.

Jang et al. 2024, "Model Stock: All we need is just a few fine-tuned models", ECCV,
https://arxiv.org/abs/2403.19522 (mergekit's `model_stock`, per tensor). With cos θ the mean
pairwise cosine of the task vectors ΔW_i, t = N cos θ / (1 + (N - 1) cos θ) and
W* = t · mean(W_i) + (1 - t) · W_0, i.e. ΔW* = t · mean(ΔW_i).

Exact in factor space: ⟨ΔW_i, ΔW_j⟩ = s_i s_j tr((B_iᵀ B_j)(A_j A_iᵀ)) needs only r_i x r_j
products, and t · mean(ΔW_i) is task arithmetic with weights t · w_i / Σ|w| (the merge weights
make the mean; uniform or num_examples weights give mergekit's mean). One adapter merges to itself
(t = 1); cos θ below 0 is taken as 0 (t = 0: the updates cancel), so t stays in [0, 1].
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from strategies.merging.lowrank import LoraFactors, OutputForm, check_adapters, task_arithmetic


def inner(a: LoraFactors, b: LoraFactors) -> float:
    """⟨ΔW_a, ΔW_b⟩_F from the factors: s_a s_b tr((B_aᵀ B_b)(A_b A_aᵀ))."""
    left = a.B.to(torch.float64).T @ b.B.to(torch.float64)
    right = b.A.to(torch.float64) @ a.A.to(torch.float64).T
    return a.scale * b.scale * float((left * right.T).sum())


def mean_cosine(adapters: Sequence[LoraFactors]) -> float:
    """Mean pairwise cosine of the ΔW_i (1.0 for one adapter; a zero update counts as cosine 0)."""
    if len(adapters) == 1:
        return 1.0
    norms = [math.sqrt(max(inner(a, a), 0.0)) for a in adapters]
    cosines = [
        inner(adapters[i], adapters[j]) / (norms[i] * norms[j]) if norms[i] * norms[j] > 0 else 0.0
        for i, j in itertools.combinations(range(len(adapters)), 2)
    ]
    return sum(cosines) / len(cosines)


def stock_ratio(cosine: float, n: int) -> float:
    """t = N cos θ / (1 + (N - 1) cos θ), cos θ clamped to [0, 1]."""
    cosine = min(max(cosine, 0.0), 1.0)
    return n * cosine / (1 + (n - 1) * cosine)


def model_stock(
    adapters: Sequence[LoraFactors],
    weights: Sequence[float],
    scale: float = 1.0,
    rank: int | None = None,
    *,
    form: OutputForm = "svd",
) -> tuple[LoraFactors, float]:
    """Model Stock of one module's ΔW_i, from the factors (exact); then re-factored as task arithmetic."""
    check_adapters(adapters, weights)
    total = sum(abs(w) for w in weights)
    if total <= 0:
        raise ValueError(f"model_stock averages with the merge weights and needs one non-zero, got {list(weights)}")
    t = stock_ratio(mean_cosine(adapters), len(adapters))
    return task_arithmetic(adapters, [t * w / total for w in weights], scale, rank, form=form)
