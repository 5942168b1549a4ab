"""Fisher merging of LoRA adapters: each released parameter averaged with its diagonal Fisher as weight.

Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging", NeurIPS,
https://arxiv.org/abs/2111.09832: θ* = Σ w_i F_i ⊙ θ_i / Σ w_i F_i, elementwise, F_i the diagonal
Fisher of hospital i's model at θ_i.

Space: the released parameters, LoRA's A and B (and the heads). That is exactly Matena & Raffel's
merge of what a hospital sends, and the merge is a function of the tensors the screen checks (the
factors, their Fishers); it is NOT a Fisher-weighted average of ΔW = s·B·A: the product of the
merged factors has cross terms B_i A_j, as FedIT has (a ΔW-space Fisher would need the dense
d_out x d_in gradient second moments, which no hospital sends). It needs one rank for all hospitals.
Scalings: s_i is split as sqrt(s_i) on each factor, and a factor's Fisher is divided by s_i with
it (the Fisher of c·θ is F / c²). With equal Fishers it is FedIT (the plain weighted average).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from strategies.merging.lowrank import (
    LoraFactors,
    adapters_dtype,
    check_adapters,
    check_rank,
    check_scale,
    refactor_lowrank,
)

FISHER_A, FISHER_B = "fisher_A", "fisher_B"


def fisher_average(
    tensors: Sequence[Tensor], fishers: Sequence[Tensor], weights: Sequence[float], floor: float
) -> Tensor:
    """Σ w_i (F_i + floor) θ_i / Σ w_i (F_i + floor), elementwise, in float64 (floor keeps 0/0 away)."""
    numerator = sum(
        w * (f.to(torch.float64) + floor) * t.to(torch.float64) for t, f, w in zip(tensors, fishers, weights)
    )
    denominator = sum(w * (f.to(torch.float64) + floor) for f, w in zip(fishers, weights))
    return numerator / denominator


def check_fisher(weights: Sequence[float], floor: float) -> None:
    if not (math.isfinite(floor) and floor > 0):
        raise ValueError(
            f"fisher floor must be finite and > 0 (it keeps a zero Fisher from dividing by 0), got {floor}"
        )
    negative = [i for i, w in enumerate(weights) if w < 0]
    if negative or sum(weights) <= 0:
        raise ValueError(
            f"fisher merging averages with weights >= 0 and a positive total, got {list(weights)}; "
            "negation is task arithmetic's: use strategy.merge=task_arithmetic"
        )


def fisher(
    adapters: Sequence[LoraFactors],
    weights: Sequence[float],
    scale: float = 1.0,
    rank: int | None = None,
    stats: Sequence[Mapping[str, Tensor]] | None = None,
    *,
    floor: float = 1e-8,
) -> tuple[LoraFactors, float]:
    """Fisher-weighted average of A and B separately (`stats[i]`: 'fisher_A', 'fisher_B', the factors' shapes).

    INEXACT for ΔW (see the module docstring). rank None keeps the averaged factors; a smaller int
    truncates their product by SVD. Returns the factors and the truncation's relative error.
    """
    check_adapters(adapters, weights)
    check_rank(rank)
    check_scale(scale)
    check_fisher(weights, floor)
    ranks = [a.rank for a in adapters]
    if len(set(ranks)) != 1:
        raise ValueError(
            f"fisher averages A and B separately and needs one rank; got ranks {ranks}; use regmean or task_arithmetic"
        )
    if any(a.scale <= 0 for a in adapters):
        raise ValueError(
            f"fisher splits sqrt(s_i) between A and B and needs s_i > 0, got {[a.scale for a in adapters]}"
        )
    if stats is None or len(stats) != len(adapters):
        raise ValueError(
            "fisher needs every hospital's diagonal Fisher (statistics 'fisher'); run with strategy.stats=[fisher]"
        )
    for i, (a, hospital) in enumerate(zip(adapters, stats)):
        for key, factor in ((FISHER_A, a.A), (FISHER_B, a.B)):
            if key not in hospital or tuple(hospital[key].shape) != tuple(factor.shape):
                got = tuple(hospital[key].shape) if key in hospital else None
                raise ValueError(
                    f"hospital {i}'s {key} has shape {got}, its factor {tuple(factor.shape)}; run with strategy.stats=[fisher]"
                )
    dtype = adapters_dtype(adapters)
    # reparametrise: θ' = sqrt(s) θ has Fisher F / s
    A = fisher_average(
        [math.sqrt(a.scale) * a.A for a in adapters],
        [h[FISHER_A] / a.scale for a, h in zip(adapters, stats)],
        weights,
        floor,
    )
    B = scale * fisher_average(
        [math.sqrt(a.scale) * a.B for a in adapters],
        [h[FISHER_B] / a.scale for a, h in zip(adapters, stats)],
        weights,
        floor,
    )
    if rank is None or rank >= ranks[0]:
        return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), 0.0
    B, A, error = refactor_lowrank(B, A, rank)
    return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), error


def fisher_heads(
    heads: Sequence[Mapping[str, Tensor]],
    stats: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float],
    *,
    floor: float = 1e-8,
) -> dict[str, Tensor]:
    """One task's heads, each parameter Fisher-averaged (`stats[i][name]`: the Fisher of heads[i][name])."""
    check_fisher(weights, floor)
    merged = {}
    for name in heads[0]:
        for i, hospital in enumerate(stats):
            if name not in hospital or hospital[name].shape != heads[i][name].shape:
                raise ValueError(
                    f"hospital {i} sent no Fisher of shape {tuple(heads[i][name].shape)} for its head's {name!r}"
                )
        merged[name] = fisher_average([h[name] for h in heads], [s[name] for s in stats], weights, floor).to(
            heads[0][name].dtype
        )
    return merged
