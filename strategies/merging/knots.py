"""KnOTS: align the adapters' ΔW in one shared SVD basis, merge their coefficients there.

Stoica et al. 2024, "Model merging with SVD to tie the KnOTS", https://arxiv.org/abs/2410.19735.
The SVD of the side-by-side updates [ΔW_1 ... ΔW_N] = U S [V_1^T ... V_N^T] gives every adapter
the same output basis U, with ΔW_i = U C_i and coefficients C_i = S V_i^T (the paper's s_on_V).
The C_i are merged with a pipeline from `sparsify` (linear, TIES, DARE, ...), then
ΔW = scale · U C_merged is re-factored. Space: exact, from the factors; neither [ΔW_1 ... ΔW_N]
nor any ΔW_i is formed (the coefficients are (K, d_in) with K <= Σ r_i).
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
    refactor_lowrank,
)
from strategies.merging.sparsify import PIPELINES, MajoritySignMethod, Normalize, PipelineName, check_pipeline, combine


def shared_basis(adapters: Sequence[LoraFactors]) -> tuple[Tensor, Tensor]:
    """U (d_out, K) orthonormal and coefficients C (N, K, d_in) with s_i B_i A_i = U @ C[i], in float64.

    Thin QRs (B_stack = Qb Rb, A_i^T = Qa_i Ra_i) reduce [ΔW_1 ... ΔW_N] to a small core with
    K = min(d_out, Σ r_i) rows, whose left singular vectors (eigenvectors of its Gram matrix,
    descending) give U. float64 on purpose: trimming the coefficients is discontinuous, and in
    float32 close singular directions mix enough to change which entries survive.
    """
    # factor the outputs: [s_1 B_1 ... s_N B_N] = Qb Rb
    B_stack = torch.cat([a.scale * a.B.to(torch.float64) for a in adapters], dim=1)
    Qb, Rb = torch.linalg.qr(B_stack, mode="reduced")
    # factor the inputs: A_i^T = Qa_i Ra_i, block by block
    Qa, Ra = zip(*(torch.linalg.qr(a.A.to(torch.float64).T, mode="reduced") for a in adapters))
    blocks = torch.split(Rb, [a.rank for a in adapters], dim=1)
    # core: [ΔW_1 ... ΔW_N] = Qb [Rb_1 Ra_1^T ... Rb_N Ra_N^T] blockdiag(Qa_i)^T
    core = torch.cat([block @ R.T for block, R in zip(blocks, Ra)], dim=1)
    # basis: left singular vectors of the core, descending; zero directions get zero coefficients
    W = torch.linalg.eigh(core @ core.T).eigenvectors.flip(1)
    # coefficients: C_i = S V_i^T = W^T core_i, back in the input space
    pieces = torch.split(W.T @ core, [Q.shape[1] for Q in Qa], dim=1)
    coefficients = torch.stack([piece @ Q.T for piece, Q in zip(pieces, Qa)])
    return Qb @ W, coefficients


def knots(
    adapters: Sequence[LoraFactors],
    weights: Sequence[float],
    scale: float = 1.0,
    rank: int | None = None,
    *,
    inner: PipelineName = "ties",
    density: float = 0.2,
    majority_sign_method: MajoritySignMethod = "total",
    normalize: Normalize = "weights",
    seed: int | torch.Generator = 0,
) -> tuple[LoraFactors, float]:
    """KnOTS (Stoica et al. 2024, https://arxiv.org/abs/2410.19735): merge in a shared SVD basis.

    inner: how the coefficients merge (a `sparsify.PIPELINES` name; the paper's best are "ties" and
    "dare_ties"; "linear" is exactly task arithmetic). density, majority_sign_method, normalize and
    seed as in `sparsify.combine`; density is per module here (the paper trims over all layers at
    once). rank None keeps every aligned direction (<= Σ r_i, lossless); an int truncates by SVD.
    """
    check_adapters(adapters, weights)
    check_rank(rank)
    check_scale(scale)
    if inner not in PIPELINES:
        raise ValueError(f"unknown KnOTS inner merge {inner!r}; choose one of {sorted(PIPELINES)}")
    check_pipeline(inner, density, majority_sign_method, normalize)
    dtype = adapters_dtype(adapters)
    # align
    U, coefficients = shared_basis(adapters)
    # merge coefficients
    merged = combine(
        coefficients,
        weights,
        pipeline=inner,
        density=density,
        majority_sign_method=majority_sign_method,
        normalize=normalize,
        seed=seed,
    )
    # scale and re-factor: ΔW = scale · U C
    B, A, error = refactor_lowrank(scale * U, merged, rank)
    return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), error
