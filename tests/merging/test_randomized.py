"""Certified randomized truncation of Σ wᵢ Bᵢ Aᵢ (strategies/merging/randomized.py) and its use by task arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from strategies.merging import lowrank
from strategies.merging.lowrank import LoraFactors, task_arithmetic, truncation_error
from strategies.merging.randomized import certified_bound, randomized_factors, worth_trying

D, R, K = 256, 16, 16


def gapped_adapters(n: int, noise: float = 1e-4, seed: int = 0) -> list[LoraFactors]:
    """N adapters sharing K strong directions (a spectrum with a gap at K) plus small private noise."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(D, K, generator=g)).Q
    V = torch.linalg.qr(torch.randn(D, K, generator=g)).Q
    strengths = torch.logspace(0, -1, K)  # leading singular values 1 .. 0.1, then noise
    return [
        LoraFactors(
            A=V.T + noise * torch.randn(R, D, generator=g),
            B=(U * strengths) @ torch.randn(K, R, generator=g) / math.sqrt(R) + noise * torch.randn(D, R, generator=g),
            scale=2.0,
        )
        for _ in range(n)
    ]


def random_adapters(n: int, seed: int = 0) -> list[LoraFactors]:
    """Independent random adapters: a flat spectrum, no gap at K (bench_merge's adapters)."""
    g = torch.Generator().manual_seed(seed)
    return [
        LoraFactors(A=torch.randn(R, D, generator=g) / math.sqrt(D), B=0.02 * torch.randn(D, R, generator=g))
        for _ in range(n)
    ]


def stacks(adapters: list[LoraFactors], weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    B = torch.cat([w * a.scale * a.B for a, w in zip(adapters, weights)], dim=1)
    return B, torch.cat([a.A for a in adapters], dim=0)


def best_rank_k(B: torch.Tensor, A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact best rank-k ΔW (float64 dense SVD) and all singular values."""
    U, S, Vh = torch.linalg.svd(B.double() @ A.double(), full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k], S


def test_a_certified_result_is_within_1e_4_of_the_exact_best_rank_k():
    adapters = gapped_adapters(12)
    weights = [1 / 12] * 12
    B_stack, A_stack = stacks(adapters, weights)

    found = randomized_factors(B_stack, A_stack, K)

    assert found is not None
    B, A, error = found
    best, S = best_rank_k(B_stack, A_stack, K)
    distance = torch.linalg.matrix_norm(B.double() @ A.double() - best) / torch.linalg.matrix_norm(best)
    assert distance <= 1e-4
    assert error == pytest.approx(truncation_error(S, K), rel=1e-3)


def test_a_flat_spectrum_is_declined():
    adapters = random_adapters(12)
    B_stack, A_stack = stacks(adapters, [1.0] * 12)

    assert randomized_factors(B_stack, A_stack, K) is None


def test_task_arithmetic_takes_the_randomized_path_when_certified(monkeypatch):
    adapters = gapped_adapters(12)
    weights = [0.5] * 12
    B_exact, A_exact, exact_error = lowrank.refactor_lowrank(*stacks(adapters, weights), K)

    def no_exact(*args, **kwargs):
        raise AssertionError("the exact path ran")

    monkeypatch.setattr(lowrank, "refactor_lowrank", no_exact)
    merged, error = task_arithmetic(adapters, weights, rank=K)

    exact = B_exact.double() @ A_exact.double()
    difference = torch.linalg.matrix_norm(merged.delta().double() - exact)
    assert difference <= 1e-4 * torch.linalg.matrix_norm(exact)
    # both are float32 estimates of a ~1e-4 relative error: they agree to float32 precision of ||M||, not to 0.1% of
    # themselves (1 and 2 torch threads round differently; that alone moved the two apart by 1e-3 relative)
    assert error == pytest.approx(exact_error, abs=1e-6)


def test_task_arithmetic_falls_back_to_the_exact_path_on_a_flat_spectrum():
    adapters = random_adapters(12)
    weights = [1 / 12] * 12

    merged, error = task_arithmetic(adapters, weights, rank=K)

    B, A, exact_error = lowrank.refactor_lowrank(*stacks(adapters, weights), K)
    assert torch.equal(merged.A, A) and torch.equal(merged.B, B) and error == exact_error


def test_the_randomized_path_is_tried_only_for_a_rank_well_below_the_stack():
    assert worth_trying(total_rank=512, rank=16, d_out=768, d_in=768)
    assert not worth_trying(total_rank=64, rank=16, d_out=768, d_in=768)  # 4 x (16 + 10) > 64
    assert not worth_trying(total_rank=512, rank=16, d_out=64, d_in=768)


def test_no_gap_no_certificate():
    flat = torch.ones(30)

    assert certified_bound(flat, residual=0.0, residual_on_kept=0.0, rank=16, eps=0.0) == math.inf
    assert certified_bound(torch.linspace(2, 1, 30), residual=1.0, residual_on_kept=1.0, rank=16, eps=0.0) == math.inf


def test_truncation_exact_skips_the_randomized_path(monkeypatch):
    monkeypatch.setattr(lowrank, "randomized_factors", lambda *a, **k: pytest.fail("randomized path tried"))
    B_stack, A_stack = stacks(gapped_adapters(12), [1.0] * 12)

    lowrank.truncate_lowrank(B_stack, A_stack, K, "exact")

    with pytest.raises(ValueError, match=r"unknown truncation 'fast'; choose one of \['auto', 'exact'\]"):
        lowrank.truncate_lowrank(B_stack, A_stack, K, "fast")
