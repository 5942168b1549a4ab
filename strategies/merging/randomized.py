"""Truncated re-factoring of Σ wᵢ Bᵢ Aᵢ by a randomized range finder, certified or declined.

Space: the product M = B_stack @ A_stack (d_out x d_in, rank R = Σ rᵢ), never formed. For a
truncation rank k much smaller than R, the leading singular triplets come from a randomized range
finder with power iterations (Halko, Martinsson & Tropp 2011, "Finding structure with randomness",
https://arxiv.org/abs/0909.4061, Algorithm 4.4): a (k + p)-column orthonormal Q whose span holds
M's leading left singular subspace, then the exact SVD of the small Q^T M. Cost O((d_out + d_in)
R (k + p) q) against the exact path's O(d R²) QRs and R x R eigendecomposition.

The result is returned only when an a-posteriori bound certifies it: with N = QQ^T M and
E = M - N (its norm from the factors, no d x d matrix), Weyl bounds M's eigenvalues from N's
and Davis-Kahan bounds how far N's leading right singular subspace is from M's
(`certified_bound`); the bound is quadratic in ||E||, so a few power iterations certify 1e-4 on a
spectrum with a gap at k. When that bound exceeds `tolerance` · ||N_k||_F (a flat spectrum around k: no small subspace
pins the best rank-k matrix down) the caller takes the exact path instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

OVERSAMPLE = 10  # extra columns of the range finder (Halko et al. recommend 5-10)
POWER_ITERATIONS = 3  # subspace iterations: sharpen a slowly decaying spectrum
TOLERANCE = 1e-4  # certified ||ΔW_k(randomized) - ΔW_k(exact)||_F / ||ΔW_k||_F
# below this relative gap σ̃_k - σ̃_{k+1} the bound needs an (almost) exactly low-rank M: decline at once
MIN_RELATIVE_GAP = 0.01


def worth_trying(total_rank: int, rank: int, d_out: int, d_in: int, oversample: int = OVERSAMPLE) -> bool:
    """Whether the randomized path can beat the exact one: the sketch must be much thinner than R."""
    width = rank + oversample
    return 4 * width <= min(total_rank, d_out, d_in)


def range_finder(
    B_stack: Tensor, A_stack: Tensor, width: int, power_iterations: int, generator: torch.Generator
) -> Tensor:
    """Orthonormal Q (d_out, width) whose span approximates the leading left singular subspace of B_stack @ A_stack."""
    # sketch: Y = M Ω, Ω Gaussian (d_in, width)
    omega = torch.randn(A_stack.shape[1], width, generator=generator, dtype=A_stack.dtype)
    Q = torch.linalg.qr(B_stack @ (A_stack @ omega)).Q
    # power iterations, re-orthonormalised each half step (M^T Q, then M Z)
    for _ in range(power_iterations):
        Z = torch.linalg.qr(A_stack.T @ (B_stack.T @ Q)).Q
        Q = torch.linalg.qr(B_stack @ (A_stack @ Z)).Q
    return Q


def lowrank_frobenius_sq(B: Tensor, A: Tensor) -> float:
    """||B @ A||_F² = Σ (BᵀB) ⊙ (AAᵀ), from the factors (two R x R Gram matrices, summed in float64)."""
    return float(((B.T @ B) * (A @ A.T)).sum(dtype=torch.float64))


def certified_bound(singular_values: Tensor, residual: float, residual_on_kept: float, rank: int, eps: float) -> float:
    """Upper bound on ||N_k - M_k||_F / ||M_k||_F; inf when no bound is within reach.

    singular_values: σ̃ of N = QQ^T M; residual: ||E||_F, E = M - N; residual_on_kept: ||E Ṽ_k||_F.
    Because Q^T E = 0, M^T M = N^T N + E^T E: a perturbation of N^T N of norm ||E||², so by
    Davis-Kahan ||sin Θ(Ṽ_k, V_k)||_F <= ||E|| ||E Ṽ_k||_F / (σ̃_k² - σ̃_{k+1}² - ||E||²) (Weyl bounds
    λ_{k+1}(M^T M)). Then N_k - M_k = M (Ṽ_kṼ_k^T - V_kV_k^T) - E Ṽ_kṼ_k^T, so
    ||N_k - M_k||_F <= σ₁(M) √2 ||sin Θ||_F + ||E Ṽ_k||_F, with σ₁(M)² <= σ̃₁² + ||E||²; divided by
    ||N_k||_F <= ||M_k||_F. `eps` adds the working precision's rounding of the small SVD.
    """
    s = singular_values.to(torch.float64)
    if s.numel() <= rank:
        return math.inf
    separation = float(s[rank - 1] ** 2 - s[rank] ** 2) - residual**2
    kept = float(s[:rank].square().sum().sqrt())
    if separation <= 0.0 or kept == 0.0:
        return math.inf
    sin_theta = residual * residual_on_kept / separation
    top = math.sqrt(float(s[0]) ** 2 + residual**2)
    return (top * math.sqrt(2.0) * sin_theta + residual_on_kept + 100.0 * eps * top) / kept


def randomized_factors(
    B_stack: Tensor,
    A_stack: Tensor,
    rank: int,
    *,
    oversample: int = OVERSAMPLE,
    power_iterations: int = POWER_ITERATIONS,
    tolerance: float = TOLERANCE,
    seed: int = 0,
) -> tuple[Tensor, Tensor, float] | None:
    """Rank-`rank` factors B (d_out, k), A (k, d_in) of B_stack @ A_stack and their truncation error, or None.

    None: the bound does not certify `tolerance` against the exact best rank-k approximation; use
    the exact path. The error returned is the relative Frobenius error of the truncation against
    M (what the exact path reports), from the residual and the dropped singular values. sqrt(S) is split
    evenly between B and A, as `leading_factors` does. Deterministic for a seed.
    """
    generator = torch.Generator().manual_seed(seed)
    Q = range_finder(B_stack, A_stack, rank + oversample, power_iterations, generator)
    # small SVD: Q^T M = Ũ S Ṽ^T, l x d_in
    projected = (Q.T @ B_stack) @ A_stack
    U, S, Vh = torch.linalg.svd(projected, full_matrices=False)
    # a flat spectrum around k: no bound below `tolerance` is within reach, decline before paying for the residual
    if S.numel() <= rank or S[rank - 1] - S[rank] < MIN_RELATIVE_GAP * S[rank - 1]:
        return None
    # residual E = (I - QQ^T) M = B_perp A, its norm from the factors
    B_perp = B_stack - Q @ (Q.T @ B_stack)
    residual = math.sqrt(max(lowrank_frobenius_sq(B_perp, A_stack), 0.0))
    residual_on_kept = float(torch.linalg.matrix_norm(B_perp @ (A_stack @ Vh[:rank].T)))  # ||E Ṽ_k||_F
    if certified_bound(S, residual, residual_on_kept, rank, torch.finfo(S.dtype).eps) > tolerance:
        return None
    root = S[:rank].sqrt()
    B = (Q @ U[:, :rank]) * root
    A = root[:, None] * Vh[:rank]
    # error² = (||E||² + Σ_{i>k} S_i²) / ||M||²: no cancellation when the truncation is nearly lossless
    dropped = residual**2 + float(S[rank:].to(torch.float64).square().sum())
    total = dropped + float(S[:rank].to(torch.float64).square().sum())  # ||M||² = ||QQ^T M||² + ||E||²
    return B, A, math.sqrt(dropped / total) if total > 0 else 0.0
