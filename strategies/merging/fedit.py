"""FedIT: federated averaging of the LoRA factors A and B separately (inexact for ΔW).

Space: the factors, not the product. The merged ΔW = (Σ w_i B_i)(Σ w_i A_i) differs from the
weighted sum Σ w_i B_i A_i by cross terms B_i A_j; `deviation_from_task_arithmetic` measures how much.
This is what FedIT and PEFT's `linear` combination do; use `task_arithmetic` for the exact sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from strategies.merging.lowrank import (
    LoraFactors,
    adapters_dtype,
    check_adapters,
    check_rank,
    check_scale,
    refactor_lowrank,
)


def fedit(
    adapters: Sequence[LoraFactors],
    weights: Sequence[float],
    scale: float = 1.0,
    rank: int | None = None,
) -> tuple[LoraFactors, float]:
    """Weighted average of A and B separately; INEXACT: the product of averages is not the average ΔW.

    Zhang et al. 2024, "Towards Building the Federated GPT: Federated Instruction Tuning" (FedIT),
    https://arxiv.org/abs/2305.05644. A = Σ w_i sqrt(s_i) A_i and B = Σ |w_i| sqrt(s_i) B_i, so with
    one scaling s it is s · (Σ w_i B_i)(Σ w_i A_i), and a weight's sign acts once (weight -1 negates).
    PEFT's `linear` puts sqrt(|w_i|) on each factor instead: PEFT linear(w) = fedit(sign(w) sqrt(|w|)).
    Every adapter needs the same rank. rank None keeps the averaged factors; a smaller int truncates
    their product by SVD. Returns the factors and the truncation's relative error (not the deviation
    from the exact weighted sum: the registry labels this method inexact).
    """
    check_adapters(adapters, weights)
    check_rank(rank)
    check_scale(scale)
    ranks = [a.rank for a in adapters]
    if len(set(ranks)) != 1:
        raise ValueError(
            f"fedit averages A and B separately, so every adapter needs the same rank; got ranks {ranks} "
            f"(in hospital order); use task_arithmetic, cat or svd, which merge mixed ranks exactly"
        )
    negative = [i for i, a in enumerate(adapters) if a.scale < 0]
    if negative:
        raise ValueError(
            f"fedit splits sqrt(s_i) between A and B and needs scalings s_i = lora_alpha / r >= 0; "
            f"adapters {negative} have {[adapters[i].scale for i in negative]}"
        )
    dtype = adapters_dtype(adapters)
    # weight: the sign of w_i on A only, sqrt(s_i) on each factor
    A = sum(w * math.sqrt(a.scale) * a.A.to(torch.float64) for a, w in zip(adapters, weights))
    B = sum(abs(w) * math.sqrt(a.scale) * a.B.to(torch.float64) for a, w in zip(adapters, weights))
    # scale
    B = scale * B
    if rank is None or rank >= ranks[0]:
        return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), 0.0
    # truncate
    B, A, error = refactor_lowrank(B, A, rank)
    return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), error
