"""Byzantine-robust merges: coordinate-wise median and trimmed mean of the hospitals' ΔW.

Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates" (ICML), https://arxiv.org/abs/1803.01498: per coordinate, the median (or the
mean after dropping the `trim` fraction of largest and smallest values) is close to the honest
mean while fewer than half (or than the trimmed fraction) of the hospitals are malicious, whatever
they send. Space: the explicit ΔW_i = s_i B_i A_i, re-factored by SVD like TIES. The statistic is
unweighted, so a hospital cannot buy influence with a reported example count; the total weight
Σ w_i still scales the result, so with weights summing to 1 it replaces the weighted mean (and
negated weights negate it, as for task arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from strategies.merging.lowrank import (
    LoraFactors,
    adapters_dtype,
    check_adapters,
    check_rank,
    check_scale,
    refactor_dense,
)


def _deltas(adapters: Sequence[LoraFactors], weights: Sequence[float]) -> tuple[Tensor, float]:
    """The stacked ΔW_i (N, d_out, d_in) and the total weight Σ w_i (its sign included)."""
    check_adapters(adapters, weights)
    work = torch.promote_types(adapters_dtype(adapters), torch.float32)
    return torch.stack([(a.B.to(work) @ a.A.to(work)) * a.scale for a in adapters]), math.fsum(weights)


def _finish(
    adapters: Sequence[LoraFactors], merged: Tensor, scale: float, rank: int | None
) -> tuple[LoraFactors, float]:
    B, A, error = refactor_dense(scale * merged, rank)
    dtype = adapters_dtype(adapters)
    return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), error


def coordinate_median(
    adapters: Sequence[LoraFactors], weights: Sequence[float], scale: float = 1.0, rank: int | None = None
) -> tuple[LoraFactors, float]:
    """ΔW = scale · Σw · median_i ΔW_i per coordinate (the mean of the two middle values for even N)."""
    check_rank(rank)
    check_scale(scale)
    deltas, total = _deltas(adapters, weights)
    ordered = deltas.sort(dim=0).values
    n = len(adapters)
    middle = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return _finish(adapters, total * middle, scale, rank)


def trimmed_mean(
    adapters: Sequence[LoraFactors],
    weights: Sequence[float],
    scale: float = 1.0,
    rank: int | None = None,
    *,
    trim: float = 0.2,
) -> tuple[LoraFactors, float]:
    """ΔW = scale · Σw · mean of ΔW_i per coordinate after dropping the floor(trim·N) largest and smallest."""
    check_rank(rank)
    check_scale(scale)
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5): the fraction dropped at each end, got {trim}")
    deltas, total = _deltas(adapters, weights)
    n = len(adapters)
    cut = math.floor(trim * n)
    kept = deltas.sort(dim=0).values[cut : n - cut]
    return _finish(adapters, total * kept.mean(dim=0), scale, rank)
