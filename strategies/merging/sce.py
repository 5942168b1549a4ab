"""SCE on LoRA updates: select high-variance entries, calculate each hospital's weight, erase minority signs.

Wan et al. 2024, "FuseChat: Knowledge Fusion of Chat Models", https://arxiv.org/abs/2408.07990 (as
mergekit's `sce` implements it). Space: the dense ΔW_i = s_i B_i A_i (selection and sign erasure are
element-wise), re-factored by SVD. SCE computes its own hospital weights from the updates (mean
square of each selected ΔW_i); the merge weights only scale the result by Σ w (as `median` does),
so weight -1 negates and uniform or num_examples weights (Σ w = 1) give mergekit's merge.
"""

from __future__ import annotations

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


def sce_select(deltas: Tensor, select_topk: float) -> Tensor:
    """Select: keep the entries whose variance across the adapters is among the top `select_topk` of the nonzero ones."""
    if select_topk >= 1.0:
        return deltas
    variance = deltas.var(dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(variance)) * select_topk)
    mask = torch.zeros(variance.numel(), dtype=torch.bool)
    if k > 0:
        mask[variance.abs().flatten().topk(k).indices] = True
    return deltas * mask.reshape(variance.shape)


def sce_weights(deltas: Tensor) -> Tensor:
    """Calculate: each adapter's mean square over the sum of them (equal when all are ~0)."""
    squares = deltas.square().mean(dim=tuple(range(1, deltas.dim())))
    total = float(squares.sum())
    return torch.full_like(squares, 1.0 / len(squares)) if abs(total) < 1e-6 else squares / total


def sce_combine(deltas: Tensor, select_topk: float) -> Tensor:
    """The SCE merge of a stack of ΔW_i (adapter on dim 0)."""
    # select
    deltas = sce_select(deltas, select_topk)
    # erase: entries whose sign differs from the sign of the sum (zeros never agree)
    elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    agree = deltas.sign() == elected
    # calculate, then the weighted mean over the agreeing entries
    weights = sce_weights(deltas).reshape(-1, *([1] * (deltas.dim() - 1))) * agree
    return (deltas * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1e-6)


def sce(
    adapters: Sequence[LoraFactors],
    weights: Sequence[float],
    scale: float = 1.0,
    rank: int | None = None,
    *,
    select_topk: float = 1.0,
) -> tuple[LoraFactors, float]:
    """SCE of one module's ΔW_i (see the module docstring), times Σ w, re-factored by SVD."""
    check_adapters(adapters, weights)
    check_rank(rank)
    check_scale(scale)
    if not 0.0 < select_topk <= 1.0:
        raise ValueError(f"select_topk is the fraction of entries kept and must be in (0, 1], got {select_topk!r}")
    dtype = adapters_dtype(adapters)
    work = torch.promote_types(dtype, torch.float32)
    deltas = torch.stack([(a.B.to(work) @ a.A.to(work)) * a.scale for a in adapters])
    merged = scale * sum(weights) * sce_combine(deltas, select_topk)
    B, A, error = refactor_dense(merged, rank)
    return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), error
