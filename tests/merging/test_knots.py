"""KnOTS: shared SVD basis from the factors, coefficient merging, against a dense reference."""

import pytest
import torch

from strategies.merging.knots import knots, shared_basis
from strategies.merging.lowrank import LoraFactors, task_arithmetic
from tests.merging.factories import random_adapter, rel

MIXED = [(2, 2.0, 0), (3, 0.5, 1), (5, 1.0, 2)]


def test_shared_basis_reconstructs_every_update():
    # Prepare
    adapters = [random_adapter(11, 9, r, s, seed) for r, s, seed in MIXED]

    # Execute
    U, coefficients = shared_basis(adapters)

    # Assert: U orthonormal, K <= Σ r_i, U C_i = s_i B_i A_i
    K = U.shape[1]
    assert K == 10 and coefficients.shape == (3, K, 9)
    torch.testing.assert_close(U.T @ U, torch.eye(K, dtype=torch.float64))
    for a, C in zip(adapters, coefficients):
        torch.testing.assert_close(U @ C, a.delta())


def test_shared_basis_is_the_svd_of_the_side_by_side_updates():
    # Prepare
    adapters = [random_adapter(11, 9, r, s, seed) for r, s, seed in MIXED]
    stacked = torch.cat([a.delta() for a in adapters], dim=1)

    # Execute
    U, coefficients = shared_basis(adapters)

    # Assert: same singular values; C = S V^T has orthogonal rows of norm s_j
    s = torch.linalg.svdvals(stacked)[: U.shape[1]]
    row_norms = torch.linalg.vector_norm(torch.cat(list(coefficients), dim=1), dim=1)
    torch.testing.assert_close(row_norms, s)


def test_knots_linear_is_exact_task_arithmetic():
    # Prepare
    adapters = [random_adapter(8, 12, r, s, seed) for r, s, seed in MIXED]
    weights = [0.2, -0.5, 0.9]

    # Execute
    merged, error = knots(adapters, weights, scale=0.7, inner="linear")

    # Assert
    exact, _ = task_arithmetic(adapters, weights, scale=0.7)
    assert error == 0.0 and merged.rank == 8
    assert rel(merged.delta(), exact.delta()) < 1e-10


def test_knots_ties_matches_dense_reference():
    # Prepare: the paper's recipe on explicit matrices: SVD of [ΔW_1 ... ΔW_N], TIES on S V_i^T
    adapters = [random_adapter(10, 7, r, s, seed) for r, s, seed in MIXED]
    weights = [0.5, 0.3, 0.2]
    U, S, Vh = torch.linalg.svd(torch.cat([a.delta() for a in adapters], dim=1), full_matrices=False)
    K = 10  # Σ r_i: the rank of the side-by-side updates
    U, S, Vh = U[:, :K], S[:K], Vh[:K]
    C = torch.stack(torch.split(S[:, None] * Vh, 7, dim=1))
    k = int(0.3 * C[0].numel())
    flat = C.reshape(3, -1)
    trimmed = (flat * (flat.abs() >= flat.abs().topk(k, dim=1).values[:, -1:])).reshape(C.shape)
    agree = trimmed.sign() == torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)
    w = torch.tensor(weights, dtype=torch.float64)[:, None, None]
    expected = 1.5 * U @ ((w * trimmed * agree).sum(0) / (w * agree).sum(0).clamp(min=1e-300))

    # Execute
    merged, error = knots(adapters, weights, scale=1.5, inner="ties", density=0.3)

    # Assert
    assert error == 0.0
    assert rel(merged.delta(), expected) < 1e-9


def test_knots_truncates_to_rank():
    adapters = [random_adapter(10, 7, r, s, seed) for r, s, seed in MIXED]
    full, _ = knots(adapters, [1 / 3] * 3, inner="dare_ties", density=0.5, seed=3)
    merged, error = knots(adapters, [1 / 3] * 3, rank=2, inner="dare_ties", density=0.5, seed=3)
    assert merged.rank == 2 and 0.0 < error < 1.0
    assert rel(merged.delta(), full.delta()) == pytest.approx(error, rel=1e-8)


def test_knots_of_zero_adapters_is_zero():
    zero = LoraFactors(A=torch.zeros(2, 5), B=torch.zeros(4, 2))
    merged, error = knots([zero, zero], [0.5, 0.5])
    assert error == 0.0 and torch.count_nonzero(merged.delta()) == 0


def test_knots_rejects_unknown_inner():
    choices = (
        r"\['breadcrumbs', 'breadcrumbs_ties', 'dare_linear', 'dare_ties', 'della', 'della_linear', 'linear', "
        r"'magnitude_prune', 'ties'\]"
    )
    with pytest.raises(ValueError, match=rf"unknown KnOTS inner merge 'mean'; choose one of {choices}"):
        knots([random_adapter(4, 4, 2, 1.0, 0)], [1.0], inner="mean")
