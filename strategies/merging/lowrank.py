"""Low-rank merge math: LoRA factors, exact task arithmetic, SVD re-factoring.

Space: merges here work on the product ΔW = scale · B @ A (exact for LoRA), never on A and B
separately. A sum of products is re-factored to LoRA form by thin QR + an SVD of a small core,
so no d_out x d_in matrix is formed. `refactor_dense` re-factors a ΔW that has been formed
(the sparsifying methods work element-wise on it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import torch
from torch import Tensor

from strategies.merging.randomized import randomized_factors, worth_trying

OutputForm = Literal["svd", "cat"]
OUTPUT_FORMS: tuple[str, ...] = get_args(OutputForm)
Truncation = Literal["auto", "exact"]
TRUNCATIONS: tuple[str, ...] = get_args(Truncation)


@dataclass(frozen=True, eq=False)
class LoraFactors:
    """One LoRA module: ΔW = scale · B @ A, as PEFT applies it (scale = lora_alpha / r)."""

    A: Tensor  # (r, d_in)
    B: Tensor  # (d_out, r)
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2:
            raise ValueError(
                f"LoraFactors needs 2-D A (r, d_in) and B (d_out, r), "
                f"got A {tuple(self.A.shape)} and B {tuple(self.B.shape)}"
            )
        if self.B.shape[1] != self.A.shape[0]:
            raise ValueError(
                f"LoraFactors rank mismatch: B {tuple(self.B.shape)} has {self.B.shape[1]} columns "
                f"but A {tuple(self.A.shape)} has {self.A.shape[0]} rows"
            )
        if not math.isfinite(self.scale):
            raise ValueError(f"LoraFactors scale must be finite, got {self.scale}")

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def d_in(self) -> int:
        return self.A.shape[1]

    @property
    def d_out(self) -> int:
        return self.B.shape[0]

    def delta(self) -> Tensor:
        """The explicit ΔW (d_out, d_in); for tests and small modules."""
        return self.scale * (self.B @ self.A)


class ModuleMerge(Protocol):
    """Signature every merge method shares: adapters of one module -> merged factors, truncation error.

    Method parameters (density, seed, ...) are keyword-only with defaults; the registry declares them.
    """

    def __call__(
        self,
        adapters: Sequence[LoraFactors],
        weights: Sequence[float],
        scale: float = 1.0,
        rank: int | None = None,
        **params: Any,
    ) -> tuple[LoraFactors, float]: ...


def check_rank(rank: int | None) -> None:
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None (lossless), got {rank!r}")


def truncation_error(singular_values: Tensor, rank: int) -> float:
    """Relative Frobenius error of keeping the `rank` leading singular values (Eckart-Young)."""
    s2 = singular_values.to(torch.float64).square()
    total = s2.sum().item()
    if rank >= s2.numel() or total == 0.0:
        return 0.0
    return math.sqrt(s2[rank:].sum().item() / total)


def working_dtype(*tensors: Tensor) -> torch.dtype:
    """The precision merges compute in: the inputs' promoted dtype, at least float32."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)


def leading_factors(M: Tensor, k: int) -> tuple[Tensor, Tensor, float]:
    """Best rank-k factors B (m, k), A (k, n) of a wide M (m <= n), and their relative Frobenius error.

    The leading left singular vectors U come from an eigendecomposition of the Gram matrix M M^T
    (two to three times faster than an SVD on CPU); M is then projected on them, so B @ A = U U^T M
    is exact to the working precision even where the Gram matrix squares small singular values
    away. sqrt(S) is split evenly: columns of B and rows of A both have norms sqrt(s_i). The error
    is measured on the explicit residual (0.0 when k = m, lossless).
    """
    m = M.shape[0]
    # basis
    U = torch.linalg.eigh(M @ M.T).eigenvectors[:, m - k :].flip(1)
    # project: the rows of U^T M = S V^T have norms S
    coefficients = U.T @ M
    root = torch.linalg.vector_norm(coefficients, dim=1).sqrt()
    # split sqrt(S) evenly; a zero singular value leaves a zero column and row
    B = U * root
    A = coefficients / torch.where(root > 0, root, torch.ones_like(root))[:, None]
    if k == m:
        return B, A, 0.0
    norm = torch.linalg.matrix_norm(M.to(torch.float64)).item()
    residual = torch.linalg.matrix_norm((M - U @ coefficients).to(torch.float64)).item()
    return B, A, residual / norm if norm > 0 else 0.0


def refactor_lowrank(B_stack: Tensor, A_stack: Tensor, rank: int | None) -> tuple[Tensor, Tensor, float]:
    """Factor B_stack @ A_stack (d_out, R) x (R, d_in) as B @ A of rank `rank` without forming it.

    rank None keeps min(R, d_out, d_in) directions (lossless); an int larger than that is clipped.
    Thin QRs reduce the product to a small R x R core, factored by `leading_factors`. Returns B
    (d_out, k) and A (k, d_in) in the working dtype (inputs promoted, at least float32), sqrt(S)
    split evenly between them, and the truncation's relative Frobenius error (0.0 when lossless).
    """
    if B_stack.dim() != 2 or A_stack.dim() != 2 or B_stack.shape[1] != A_stack.shape[0]:
        raise ValueError(
            f"refactor_lowrank needs B_stack (d_out, R) and A_stack (R, d_in), "
            f"got {tuple(B_stack.shape)} and {tuple(A_stack.shape)}"
        )
    check_rank(rank)
    dtype = working_dtype(B_stack, A_stack)
    # thin QR: B_stack = Qb Rb, A_stack.T = Qa Ra (reduced mode also covers R > d)
    Qb, Rb = torch.linalg.qr(B_stack.detach().to(dtype), mode="reduced")
    Qa, Ra = torch.linalg.qr(A_stack.detach().to(dtype).T, mode="reduced")
    # core: B_stack @ A_stack = Qb (Rb Ra^T) Qa^T, with Qb and Qa orthonormal
    core = Rb @ Ra.T
    k = min(core.shape) if rank is None else min(rank, *core.shape)
    Bc, Ac, error = factor_wide_side_up(core, k)  # factor the small core
    return Qb @ Bc, Ac @ Qa.T, error


def refactor_dense(delta: Tensor, rank: int | None) -> tuple[Tensor, Tensor, float]:
    """Factor an explicit ΔW (d_out, d_in) as B @ A of rank `rank` (None: min(d_out, d_in), lossless).

    By `leading_factors` on the wide orientation of ΔW. Returns B and A in ΔW's dtype (computed
    at least in float32) and the truncation's relative Frobenius error (0.0 when lossless).
    """
    if delta.dim() != 2:
        raise ValueError(f"refactor_dense needs a 2-D ΔW (d_out, d_in), got shape {tuple(delta.shape)}")
    check_rank(rank)
    M = delta.detach().to(working_dtype(delta))
    k = min(M.shape) if rank is None else min(rank, *M.shape)
    B, A, error = factor_wide_side_up(M, k)
    return B.to(delta.dtype), A.to(delta.dtype), error


def factor_wide_side_up(M: Tensor, k: int) -> tuple[Tensor, Tensor, float]:
    """`leading_factors` of M or of M.T, whichever is wide, returned as B @ A ≈ M."""
    if M.shape[0] <= M.shape[1]:
        return leading_factors(M, k)
    At, Bt, error = leading_factors(M.T, k)
    return Bt.T, At.T, error


def lowrank_norm(B: Tensor, A: Tensor) -> float:
    """Frobenius norm of B @ A (d_out, R) x (R, d_in) from thin QRs, without forming the product."""
    if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"lowrank_norm needs B (d_out, R) and A (R, d_in), got {tuple(B.shape)} and {tuple(A.shape)}")
    Rb = torch.linalg.qr(B.to(torch.float64), mode="r").R
    Ra = torch.linalg.qr(A.to(torch.float64).T, mode="r").R
    return torch.linalg.matrix_norm(Rb @ Ra.T).item()


def deviation_from_task_arithmetic(
    merged: LoraFactors, adapters: Sequence[LoraFactors], weights: Sequence[float], scale: float = 1.0
) -> float:
    """Relative Frobenius distance of a merged ΔW from the exact task arithmetic ΔW (from factors only).

    For inexact methods such as `fedit`: how far the merged product is from Σ w_i s_i B_i A_i.
    Costs O(d (r + Σ r_i)^2) per module, like an exact merge of the same adapters.
    """
    check_adapters(adapters, weights)
    target_B = torch.cat([(scale * w * a.scale) * a.B.to(torch.float64) for a, w in zip(adapters, weights)], dim=1)
    target_A = torch.cat([a.A.to(torch.float64) for a in adapters], dim=0)
    target = lowrank_norm(target_B, target_A)
    difference = lowrank_norm(
        torch.cat([merged.scale * merged.B.to(torch.float64), -target_B], dim=1),
        torch.cat([merged.A.to(torch.float64), target_A], dim=0),
    )
    if target == 0.0:
        return 0.0 if difference == 0.0 else math.inf
    return difference / target


def check_adapters(adapters: Sequence[LoraFactors], weights: Sequence[float]) -> None:
    if len(adapters) == 0:
        raise ValueError("merge needs at least one adapter, got an empty list")
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters; pass one weight per adapter")
    for i, w in enumerate(weights):
        if not math.isfinite(w):
            raise ValueError(f"weight {i} must be finite, got {w}")
    d_out, d_in = adapters[0].d_out, adapters[0].d_in
    for i, a in enumerate(adapters[1:], start=1):
        if (a.d_out, a.d_in) != (d_out, d_in):
            raise ValueError(
                f"adapter {i} has ΔW shape (d_out, d_in) = ({a.d_out}, {a.d_in}) "
                f"but adapter 0 has ({d_out}, {d_in}); all adapters must target the same module shape"
            )


def check_scale(scale: float) -> None:
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")


def adapters_dtype(adapters: Sequence[LoraFactors]) -> torch.dtype:
    """The dtype every factor promotes to; merged factors are returned in it."""
    return functools.reduce(torch.promote_types, (t.dtype for a in adapters for t in (a.A, a.B)))


def task_arithmetic(
    adapters: Sequence[LoraFactors],
    weights: Sequence[float],
    scale: float = 1.0,
    rank: int | None = None,
    *,
    form: OutputForm = "svd",
) -> tuple[LoraFactors, float]:
    """Exact task arithmetic ΔW = scale · Σ w_i · s_i · B_i A_i, returned in LoRA form (scale 1).

    Ilharco et al. 2023, "Editing Models with Task Arithmetic", https://arxiv.org/abs/2212.04089.
    form "svd": re-factored from the factors (thin QRs + a small Σr x Σr core), computed in the
    adapters' precision (at least float32); rank None is lossless (min(Σ r_i, d_out, d_in)), an
    int truncates, trying the certified randomized range finder first when the rank is much below
    Σ r_i (`truncate_lowrank`). form "cat": the factors concatenated along the rank axis (rank
    Σ r_i, lossless, no decomposition; PEFT's `cat`); takes no rank. Returns the merged factors
    and the relative Frobenius error of the truncation (0.0 when lossless).
    """
    check_adapters(adapters, weights)
    check_rank(rank)
    check_scale(scale)
    if form not in OUTPUT_FORMS:
        raise ValueError(f"unknown task arithmetic form {form!r}; choose one of {list(OUTPUT_FORMS)}")
    if form == "cat" and rank is not None:
        raise ValueError(
            f"form 'cat' keeps every factor (rank Σ r_i = {sum(a.rank for a in adapters)}) and takes no rank, "
            f"got rank={rank}; pass rank=None or use form 'svd' to truncate"
        )
    dtype = adapters_dtype(adapters)
    work = torch.promote_types(dtype, torch.float32)
    # weight: fold scale · w_i · s_i into B_i, then stack along the rank axis
    B_stack = torch.cat([(scale * w * a.scale) * a.B.to(work) for a, w in zip(adapters, weights)], dim=1)
    A_stack = torch.cat([a.A.to(work) for a in adapters], dim=0)
    if form == "cat":
        return LoraFactors(A=A_stack.to(dtype), B=B_stack.to(dtype), scale=1.0), 0.0
    # re-factor
    B, A, error = truncate_lowrank(B_stack, A_stack, rank)
    return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), error


def truncate_lowrank(
    B_stack: Tensor, A_stack: Tensor, rank: int | None, truncation: Truncation = "auto"
) -> tuple[Tensor, Tensor, float]:
    """`refactor_lowrank`, trying the randomized range finder first where it can pay off (truncation "auto").

    Its result is kept only when certified within 1e-4 of the exact best rank-k product
    (`randomized.randomized_factors`); otherwise, and with truncation "exact", the exact path runs.
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"unknown truncation {truncation!r}; choose one of {list(TRUNCATIONS)}")
    d_out, total = B_stack.shape
    if truncation == "auto" and rank is not None and worth_trying(total, rank, d_out, A_stack.shape[1]):
        found = randomized_factors(B_stack, A_stack, rank)
        if found is not None:
            return found
    return refactor_lowrank(B_stack, A_stack, rank)
