"""RegMean for LoRA: the merge that best reproduces every hospital's layer outputs on its own inputs.

Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR,
https://arxiv.org/abs/2212.09849. For a linear map (a 1x1 convolution over its channels, any
convolution over its unfolded patches) with hospital i's inputs X_i and Gram G_i = X_iᵀX_i,
W* = argmin Σ_i ||X_i Wᵀ - X_i W_iᵀ||² = (Σ W_i G_i)(Σ G_i)⁻¹. With W_i = W_0 + ΔW_i the frozen
W_0 cancels, so the merged update is ΔW* = (Σ ΔW_i G_i)(Σ G_i)⁻¹.

Factored form (exact): ΔW* = Σ_i s_i B_i [A_i G_i (Σ G)⁻¹], i.e. B = [s_1 B_1 ... s_N B_N] and
A = [A_1 G_1 S⁻¹; ...; A_N G_N S⁻¹] of rank at most Σ r_i; no d_out x d_in matrix is formed and
re-factoring at rank None is lossless. The paper's off-diagonal scaling α: each G_i becomes
α G_i + (1 - α) diag(G_i) (α = 1: plain RegMean; α = 0: a per-input-channel weighted average).

Hospitals send mean Grams (per input row); the merge weight w_i scales them (w_i G_i), so
`num_examples` weights give exactly the paper's Σ X_iᵀX_i. With every G_i = I the result is
Σ w_i ΔW_i / Σ w_i: task arithmetic whenever the weights sum to 1 (uniform, num_examples).
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
    truncate_lowrank,
)

GRAM = "gram"


def scale_off_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """α G + (1 - α) diag(G): the paper's shrinkage of the off-diagonal entries towards 0."""
    return alpha * gram + (1.0 - alpha) * torch.diag(torch.diagonal(gram))


def check_regmean(weights: Sequence[float], alpha: float, ridge: float) -> None:
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"regmean alpha (off-diagonal scaling) must be in [0, 1], got {alpha}")
    if not (math.isfinite(ridge) and ridge >= 0.0):
        raise ValueError(f"regmean ridge must be finite and >= 0, got {ridge}")
    negative = [i for i, w in enumerate(weights) if w < 0]
    if negative:
        raise ValueError(
            f"regmean weighs each hospital's Gram by its merge weight, which must be >= 0; hospitals {negative} have "
            f"{[weights[i] for i in negative]}. Negation is task arithmetic's: use strategy.merge=task_arithmetic"
        )
    if sum(weights) <= 0:
        raise ValueError(f"regmean needs a positive total merge weight, got {list(weights)}")


def weighted_grams(
    grams: Sequence[Tensor], weights: Sequence[float], alpha: float, ridge: float
) -> tuple[list[Tensor], Tensor]:
    """w_i (α G_i + (1-α) diag G_i) in float64, and their sum plus ridge · mean diagonal · I (invertible)."""
    scaled = [w * scale_off_diagonal(g.to(torch.float64), alpha) for g, w in zip(grams, weights)]
    total = sum(scaled)
    level = float(torch.diagonal(total).mean())
    total = total + (ridge * level if level > 0 else ridge) * torch.eye(total.shape[0], dtype=torch.float64)
    return scaled, total


def right_solve(M: Tensor, S: Tensor) -> Tensor:
    """M S⁻¹ for a symmetric positive definite S (Cholesky; least squares if S is numerically singular)."""
    factor, info = torch.linalg.cholesky_ex(S)
    if int(info) == 0:
        return torch.cholesky_solve(M.T, factor).T
    return torch.linalg.lstsq(S, M.T).solution.T


def regmean_dense(
    deltas: Sequence[Tensor], grams: Sequence[Tensor], weights: Sequence[float], alpha: float = 1.0, ridge: float = 0.0
) -> Tensor:
    """The reference formula on explicit matrices: (Σ w_i ΔW_i G̃_i)(Σ w_i G̃_i + ridge)⁻¹ (tests, heads)."""
    check_regmean(weights, alpha, ridge)
    scaled, total = weighted_grams(grams, weights, alpha, ridge)
    numerator = sum(d.to(torch.float64) @ g for d, g in zip(deltas, scaled))
    return right_solve(numerator, total)


def check_grams(adapters: Sequence[LoraFactors], stats: Sequence[Mapping[str, Tensor]] | None) -> list[Tensor]:
    if stats is None or len(stats) != len(adapters):
        raise ValueError(
            "regmean needs every hospital's input Gram of the module (statistics 'gram'); run with "
            "strategy.stats=[gram] (or strategy.merge=regmean) so hospitals send them"
        )
    grams = []
    for i, (adapter, hospital) in enumerate(zip(adapters, stats)):
        gram = hospital.get(GRAM)
        if gram is None:
            raise ValueError(f"hospital {i} sent no input Gram for this module; it must run with strategy.stats=[gram]")
        if tuple(gram.shape) != (adapter.d_in, adapter.d_in):
            raise ValueError(
                f"hospital {i}'s Gram has shape {tuple(gram.shape)}, the module's inputs need ({adapter.d_in}, {adapter.d_in})"
            )
        grams.append(gram)
    return grams


def regmean(
    adapters: Sequence[LoraFactors],
    weights: Sequence[float],
    scale: float = 1.0,
    rank: int | None = None,
    stats: Sequence[Mapping[str, Tensor]] | None = None,
    *,
    alpha: float = 0.9,
    ridge: float = 0.0,
) -> tuple[LoraFactors, float]:
    """RegMean of one module from the factors and each hospital's input Gram (`stats[i]['gram']`).

    Exact in factored form (rank ≤ Σ r_i; rank None is lossless). `alpha`: off-diagonal scaling
    (below 1 it keeps Σ G̃ definite wherever every input channel varies); `ridge`: ridge x the mean
    diagonal added to Σ G̃ (0: none; an input no hospital ever saw, an all-zero channel, is then
    solved by least squares and its column of ΔW is 0). Returns the factors and the truncation's error.
    """
    check_adapters(adapters, weights)
    check_rank(rank)
    check_scale(scale)
    check_regmean(weights, alpha, ridge)
    grams = check_grams(adapters, stats)
    dtype = adapters_dtype(adapters)
    scaled, total = weighted_grams(grams, weights, alpha, ridge)
    # A_i G̃_i S⁻¹ stacked; B_i scaled by s_i (and the global scale)
    A_stack = right_solve(torch.cat([a.A.to(torch.float64) @ g for a, g in zip(adapters, scaled)], dim=0), total)
    B_stack = torch.cat([(scale * a.scale) * a.B.to(torch.float64) for a in adapters], dim=1)
    B, A, error = truncate_lowrank(B_stack, A_stack, rank)
    return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), error


def regmean_heads(
    heads: Sequence[Mapping[str, Tensor]],
    stats: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float],
    *,
    alpha: float = 0.9,
    ridge: float = 0.0,
) -> dict[str, Tensor]:
    """One task's heads merged by RegMean on the penultimate features: [W | b] solved with each Gram of [x, 1].

    heads[i]: {'weight': (n_out, d), 'bias': (n_out,)}; stats[i]['gram']: (d + 1, d + 1).
    """
    check_regmean(weights, alpha, ridge)
    augmented, grams = [], []
    for i, (head, hospital) in enumerate(zip(heads, stats)):
        weight, bias = head["weight"], head.get("bias")
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias
        gram = hospital.get(GRAM)
        if gram is None or tuple(gram.shape) != (weight.shape[1] + 1,) * 2:
            raise ValueError(
                f"hospital {i}'s head needs the Gram of its features with a 1 appended, ({weight.shape[1] + 1},) * 2; "
                f"got {None if gram is None else tuple(gram.shape)}; run with strategy.stats=[gram]"
            )
        augmented.append(torch.cat([weight.to(torch.float64), bias.to(torch.float64)[:, None]], dim=1))
        grams.append(gram)
    merged = regmean_dense(augmented, grams, weights, alpha, ridge)
    dtype = heads[0]["weight"].dtype
    out = {"weight": merged[:, :-1].to(dtype)}
    if "bias" in heads[0]:
        out["bias"] = merged[:, -1].to(dtype)
    return out
