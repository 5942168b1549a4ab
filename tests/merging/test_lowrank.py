"""Merge math: SVD re-factoring, exact task arithmetic."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.merging.lowrank import (
    LoraFactors,
    deviation_from_task_arithmetic,
    lowrank_norm,
    refactor_dense,
    refactor_lowrank,
    task_arithmetic,
    truncation_error,
)
from tests.merging.factories import random_adapter, rel

SMALL = settings(max_examples=25, deadline=None)


def naive_sum(adapters, weights, scale=1.0) -> torch.Tensor:
    return scale * sum(w * a.scale * (a.B.double() @ a.A.double()) for a, w in zip(adapters, weights))


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]


# refactor_lowrank


@pytest.mark.parametrize(
    ("d_out", "d_in", "R"),
    [(12, 10, 3), (10, 12, 6), (5, 7, 12), (7, 5, 12), (6, 6, 6)],
    ids=["R<d", "R<d-wide", "R>d", "R>d-tall", "R=d"],
)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_refactor_reproduces_product(d_out, d_in, R, dtype, tol):
    # Prepare
    g = torch.Generator().manual_seed(0)
    B_stack = torch.randn(d_out, R, generator=g, dtype=dtype)
    A_stack = torch.randn(R, d_in, generator=g, dtype=dtype)

    # Execute
    B, A, error = refactor_lowrank(B_stack, A_stack, rank=None)

    # Assert
    cap = min(R, d_out, d_in)
    assert B.shape == (d_out, cap) and A.shape == (cap, d_in)
    assert B.dtype == dtype and A.dtype == dtype
    assert error == 0.0
    assert rel(B @ A, B_stack.double() @ A_stack.double()) < tol


def test_refactor_splits_singular_values_symmetrically():
    # Prepare
    g = torch.Generator().manual_seed(1)
    B_stack = torch.randn(9, 4, generator=g, dtype=torch.float64)
    A_stack = torch.randn(4, 8, generator=g, dtype=torch.float64)

    # Execute
    B, A, _ = refactor_lowrank(B_stack, A_stack, rank=None)

    # Assert: columns of B and rows of A both have norm sqrt(s_i), in descending order
    S = torch.linalg.svdvals(B_stack @ A_stack)[:4]
    torch.testing.assert_close(torch.linalg.norm(B, dim=0), S.sqrt())
    torch.testing.assert_close(torch.linalg.norm(A, dim=1), S.sqrt())


def test_refactor_truncation_error_is_analytic():
    # Prepare: M = U diag(s) V^T with known singular values
    s = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    U, V = orthonormal(10, 5, seed=2), orthonormal(8, 5, seed=3)
    B_stack, A_stack = U * s, V.T
    M = B_stack @ A_stack

    # Execute
    B, A, error = refactor_lowrank(B_stack, A_stack, rank=2)

    # Assert
    expected = math.sqrt((9 + 4 + 1) / 55)
    assert B.shape == (10, 2) and A.shape == (2, 8)
    torch.testing.assert_close(torch.linalg.norm(B, dim=0).square(), s[:2])
    assert error == pytest.approx(expected, rel=1e-12)
    assert truncation_error(s, 2) == pytest.approx(expected, rel=1e-12)
    assert rel(B @ A, M) == pytest.approx(expected, rel=1e-10)


def test_refactor_clips_rank_above_cap():
    # Prepare
    g = torch.Generator().manual_seed(4)
    B_stack, A_stack = torch.randn(4, 6, generator=g), torch.randn(6, 5, generator=g)

    # Execute
    B, A, error = refactor_lowrank(B_stack, A_stack, rank=50)

    # Assert
    assert B.shape == (4, 4) and A.shape == (4, 5)
    assert error == 0.0 and truncation_error(torch.ones(4), 50) == 0.0


@pytest.mark.parametrize("rank", [0, -1, 2.0, True])
def test_refactor_rejects_bad_rank(rank):
    with pytest.raises(ValueError, match="rank must be a positive int"):
        refactor_lowrank(torch.ones(3, 2), torch.ones(2, 3), rank=rank)


def test_refactor_rejects_mismatched_inner_dim():
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(4, 3\)"):
        refactor_lowrank(torch.ones(3, 2), torch.ones(4, 3), rank=None)


# task_arithmetic


def test_task_arithmetic_equals_naive_sum_for_heterogeneous_ranks():
    # Prepare
    adapters = [
        random_adapter(10, 12, r=2, scale=2.0, seed=10),
        random_adapter(10, 12, r=4, scale=0.5, seed=11),
        random_adapter(10, 12, r=8, scale=1.0, seed=12),
    ]
    weights = [0.2, 0.5, 0.3]

    # Execute
    merged, error = task_arithmetic(adapters, weights, scale=0.7)

    # Assert
    assert merged.scale == 1.0 and merged.rank == 10  # min(2+4+8, 10, 12)
    assert error == 0.0
    assert rel(merged.delta(), naive_sum(adapters, weights, scale=0.7)) < 1e-10


def test_task_arithmetic_float32_keeps_dtype():
    # Prepare
    adapters = [random_adapter(16, 16, r=4, scale=2.0, seed=s, dtype=torch.float32) for s in range(3)]

    # Execute
    merged, _ = task_arithmetic(adapters, [1 / 3] * 3)

    # Assert
    assert merged.A.dtype == merged.B.dtype == torch.float32
    assert rel(merged.delta(), naive_sum(adapters, [1 / 3] * 3)) < 1e-5


@SMALL
@given(
    d_out=st.integers(1, 6),
    d_in=st.integers(1, 6),
    r=st.integers(1, 5),
    scale=st.floats(0.1, 4.0),
    seed=st.integers(0, 2**16),
)
def test_one_adapter_with_weight_one_merges_to_itself(d_out, d_in, r, scale, seed):
    # Prepare
    adapter = random_adapter(d_out, d_in, r, scale, seed)

    # Execute
    merged, error = task_arithmetic([adapter], [1.0])

    # Assert
    assert merged.rank == min(r, d_out, d_in) and error == 0.0
    torch.testing.assert_close(merged.delta(), adapter.delta(), rtol=1e-10, atol=1e-10)


def test_weight_minus_one_negates():
    # Prepare
    adapter = random_adapter(7, 9, r=3, scale=2.0, seed=20)

    # Execute
    merged, _ = task_arithmetic([adapter], [-1.0])

    # Assert
    torch.testing.assert_close(merged.delta(), -adapter.delta(), rtol=1e-10, atol=1e-10)


def test_adapter_minus_itself_is_zero():
    # Prepare
    adapter = random_adapter(7, 9, r=3, scale=2.0, seed=21)

    # Execute
    merged, error = task_arithmetic([adapter, adapter], [1.0, -1.0])

    # Assert
    assert error == 0.0
    assert torch.linalg.norm(merged.delta()).item() < 1e-12


@SMALL
@given(
    ranks=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    data=st.data(),
)
def test_task_arithmetic_is_order_invariant(ranks, data):
    # Prepare
    weights = data.draw(st.lists(st.floats(-2.0, 2.0), min_size=len(ranks), max_size=len(ranks)))
    order = data.draw(st.permutations(range(len(ranks))))
    adapters = [random_adapter(5, 6, r, scale=1.0 + i, seed=i) for i, r in enumerate(ranks)]

    # Execute
    merged, _ = task_arithmetic(adapters, weights)
    permuted, _ = task_arithmetic([adapters[i] for i in order], [weights[i] for i in order])

    # Assert
    torch.testing.assert_close(permuted.delta(), merged.delta(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(merged.delta(), naive_sum(adapters, weights), rtol=1e-9, atol=1e-9)


def test_truncated_rank_error_matches_explicit_difference():
    # Prepare
    adapters = [random_adapter(20, 16, r=4, scale=2.0, seed=s) for s in range(3)]
    weights = [0.5, 0.3, 0.2]
    explicit = naive_sum(adapters, weights)

    # Execute
    merged, error = task_arithmetic(adapters, weights, rank=5)

    # Assert
    assert merged.rank == 5 and merged.scale == 1.0
    assert 0.0 < error < 1.0
    assert rel(merged.delta(), explicit) == pytest.approx(error, rel=1e-8)
    # Eckart-Young: the error is the tail of the explicit ΔW's spectrum
    s = torch.linalg.svdvals(explicit)
    assert error == pytest.approx((s[5:].square().sum() / s.square().sum()).sqrt().item(), rel=1e-8)


@pytest.mark.parametrize(
    ("adapters", "weights", "rank", "message"),
    [
        ([], [], None, "at least one adapter"),
        ([random_adapter(4, 5, 2, 1.0, 0)], [0.5, 0.5], None, "2 weights for 1 adapters"),
        ([random_adapter(4, 5, 2, 1.0, 0), random_adapter(4, 6, 2, 1.0, 1)], [0.5, 0.5], None, "adapter 1 has ΔW"),
        ([random_adapter(4, 5, 2, 1.0, 0), random_adapter(3, 5, 2, 1.0, 1)], [0.5, 0.5], None, r"\(3, 5\)"),
        ([random_adapter(4, 5, 2, 1.0, 0)], [1.0], 0, "rank must be a positive int"),
        ([random_adapter(4, 5, 2, 1.0, 0)], [math.nan], None, "weight 0 must be finite"),
    ],
    ids=["empty", "weights-length", "d_in", "d_out", "rank<1", "nan-weight"],
)
def test_task_arithmetic_validates(adapters, weights, rank, message):
    with pytest.raises(ValueError, match=message):
        task_arithmetic(adapters, weights, rank=rank)


def test_lora_factors_validate_shapes():
    with pytest.raises(ValueError, match="rank mismatch"):
        LoraFactors(A=torch.ones(3, 5), B=torch.ones(4, 2))
    with pytest.raises(ValueError, match="2-D"):
        LoraFactors(A=torch.ones(3, 5, 1, 1), B=torch.ones(4, 3))


# task_arithmetic output forms


def test_cat_form_concatenates_factors_losslessly():
    # Prepare
    adapters = [random_adapter(6, 5, r, scale=s, seed=40 + r) for r, s in [(1, 2.0), (3, 0.5), (4, 1.0)]]
    weights = [0.2, -0.5, 0.9]

    # Execute
    merged, error = task_arithmetic(adapters, weights, scale=0.7, form="cat")

    # Assert: rank Σ r_i even above min(d_out, d_in); A is the stacked A_i untouched
    assert error == 0.0 and merged.rank == 8 and merged.scale == 1.0
    torch.testing.assert_close(merged.A, torch.cat([a.A for a in adapters]))
    assert rel(merged.delta(), naive_sum(adapters, weights, scale=0.7)) < 1e-12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"form": "cat", "rank": 2}, r"form 'cat' keeps every factor \(rank Σ r_i = 2\) and takes no rank"),
        ({"form": "qr"}, r"unknown task arithmetic form 'qr'; choose one of \['svd', 'cat'\]"),
    ],
)
def test_task_arithmetic_form_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        task_arithmetic([random_adapter(4, 5, 2, 1.0, 0)], [1.0], **kwargs)


# refactor_dense, lowrank_norm, deviation


@pytest.mark.parametrize(("d_out", "d_in"), [(9, 6), (6, 9), (7, 7)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_refactor_dense_lossless(d_out, d_in, dtype, tol):
    # Prepare
    delta = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(5), dtype=dtype)

    # Execute
    B, A, error = refactor_dense(delta, rank=None)

    # Assert: rank min(d_out, d_in), sqrt(S) split evenly, exact
    cap = min(d_out, d_in)
    assert B.shape == (d_out, cap) and A.shape == (cap, d_in) and B.dtype == A.dtype == dtype
    assert error == 0.0 and rel(B @ A, delta) < tol
    torch.testing.assert_close(
        torch.linalg.norm(B.double(), dim=0), torch.linalg.norm(A.double(), dim=1), rtol=tol, atol=tol
    )


@pytest.mark.parametrize(("d_out", "d_in"), [(12, 8), (8, 12)])
def test_refactor_dense_truncation_is_eckart_young(d_out, d_in):
    # Prepare
    delta = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    s = torch.linalg.svdvals(delta)

    # Execute
    B, A, error = refactor_dense(delta, rank=3)

    # Assert
    expected = (s[3:].square().sum() / s.square().sum()).sqrt().item()
    assert B.shape == (d_out, 3) and A.shape == (3, d_in)
    assert error == pytest.approx(expected, rel=1e-10)
    assert rel(B @ A, delta) == pytest.approx(expected, rel=1e-10)


def test_refactor_dense_of_zero_and_rank_deficient():
    B, A, error = refactor_dense(torch.zeros(4, 3), rank=2)
    assert error == 0.0 and torch.count_nonzero(B @ A) == 0
    low = torch.ones(5, 1, dtype=torch.float64) @ torch.ones(1, 4, dtype=torch.float64)
    B, A, error = refactor_dense(low, rank=None)
    assert torch.isfinite(A).all() and rel(B @ A, low) < 1e-12


def test_lowrank_norm_and_deviation():
    # Prepare
    adapters = [random_adapter(7, 6, 3, scale=2.0, seed=s) for s in (50, 51)]
    explicit = naive_sum(adapters, [0.5, 0.5])
    other = random_adapter(7, 6, 2, scale=1.0, seed=52)

    # Execute
    norm = lowrank_norm(adapters[0].B, adapters[0].A)
    exact, _ = task_arithmetic(adapters, [0.5, 0.5])
    deviation = deviation_from_task_arithmetic(other, adapters, [0.5, 0.5])

    # Assert
    assert norm == pytest.approx(torch.linalg.norm(adapters[0].B @ adapters[0].A).item(), rel=1e-12)
    assert deviation_from_task_arithmetic(exact, adapters, [0.5, 0.5]) < 1e-12
    assert deviation == pytest.approx(rel(other.delta(), explicit), rel=1e-10)
