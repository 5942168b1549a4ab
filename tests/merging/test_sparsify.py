"""The sparsify -> weight -> elect sign -> disjoint merge -> scale pipeline and its ΔW-space methods."""

import pytest
import torch

from strategies.merging.lowrank import task_arithmetic
from strategies.merging.sparsify import (
    PIPELINES,
    combine,
    disjoint_merge,
    magnitude_prune,
    majority_sign_agreement,
    random_prune,
    sparse_task_arithmetic,
)
from tests.merging.factories import random_adapter, rel

# pieces


def test_magnitude_prune_keeps_the_largest_entries_of_each_adapter():
    # Prepare
    tensors = torch.tensor([[[1.0, -5.0], [3.0, -2.0]], [[0.5, 0.1], [-0.2, 4.0]]])

    # Execute
    pruned = magnitude_prune(tensors, density=0.5)

    # Assert: int(0.5 * 4) = 2 entries per adapter
    torch.testing.assert_close(pruned, torch.tensor([[[0.0, -5.0], [3.0, 0.0]], [[0.5, 0.0], [0.0, 4.0]]]))


@pytest.mark.parametrize(("density", "kept"), [(1.0, 4), (0.24, 0), (0.25, 1)])
def test_magnitude_prune_edges(density, kept):
    tensors = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.count_nonzero(magnitude_prune(tensors, density)) == kept


def test_magnitude_prune_keeps_every_entry_tied_at_the_threshold():
    # k = 2; the 2nd largest magnitude is 2, held by two entries: both stay, whatever order topk sees them in
    tensors = torch.tensor([[1.0, -2.0, 2.0, 3.0]])
    torch.testing.assert_close(magnitude_prune(tensors, 0.5), torch.tensor([[0.0, -2.0, 2.0, 3.0]]))


def test_random_prune_rescales_and_keeps_about_density():
    # Prepare
    tensors = torch.ones(2, 200, 200)

    # Execute
    pruned = random_prune(tensors, density=0.3, generator=torch.Generator().manual_seed(0))

    # Assert: kept entries are 1 / 0.3; their share is 0.3 within 5 standard deviations
    kept = pruned != 0
    torch.testing.assert_close(pruned[kept], torch.full((int(kept.sum()),), 1 / 0.3))
    share = kept.double().mean().item()
    assert abs(share - 0.3) < 5 * (0.3 * 0.7 / kept.numel()) ** 0.5


def test_random_prune_draws_like_the_global_rng():
    # PEFT draws with torch.bernoulli under the global RNG, one adapter after another
    tensors = torch.randn(3, 5, 7)
    torch.manual_seed(11)
    expected = torch.stack([t * torch.bernoulli(torch.full_like(t, 0.4)) / 0.4 for t in tensors])
    torch.testing.assert_close(random_prune(tensors, 0.4, torch.Generator().manual_seed(11)), expected)


def test_majority_sign_total_and_frequency_differ():
    # Prepare: entry 0 has one large positive and two small negatives
    tensors = torch.tensor([[5.0, 1.0], [-1.0, 0.0], [-1.0, -2.0]])

    # Execute
    total = majority_sign_agreement(tensors, "total")
    frequency = majority_sign_agreement(tensors, "frequency")

    # Assert: total elects +, - (sums 3, -1); frequency -, + (counts -1, 0: a tie elects +); zeros never agree
    assert total.tolist() == [[True, False], [False, False], [False, True]]
    assert frequency.tolist() == [[False, True], [True, False], [True, False]]


def test_disjoint_merge_normalisations():
    # Prepare
    tensors = torch.tensor([[2.0, -1.0], [4.0, 3.0], [-6.0, 0.0]])
    weights = torch.tensor([0.5, 0.25, 0.25])
    agree = torch.tensor([[True, False], [True, True], [False, False]])

    # Execute
    by_weights = disjoint_merge(tensors, weights, agree, "weights")
    by_count = disjoint_merge(tensors, weights, agree, "count")

    # Assert
    torch.testing.assert_close(by_weights, torch.tensor([(1.0 + 1.0) / 0.75, 0.75 / 0.25]))
    torch.testing.assert_close(by_count, torch.tensor([(1.0 + 1.0) / 2, 0.75 / 1]))


def test_combine_ties_by_hand():
    # Prepare: trim to 2 of 3 entries, elect sign by total, weighted disjoint mean
    tensors = torch.tensor([[3.0, -1.0, 2.0], [-4.0, 0.5, 1.0]])

    # Execute
    merged = combine(tensors, [1.0, 1.0], pipeline="ties", density=2 / 3)

    # Assert: trimmed [3, 0, 2] and [-4, 0, 1]; signs -, +(tie), +; entry 0 keeps only -4
    torch.testing.assert_close(merged, torch.tensor([-4.0, 0.0, 1.5]))


# ΔW-space methods


@pytest.mark.parametrize("pipeline", ["magnitude_prune", "dare_linear", "linear"])
def test_no_sparsification_at_density_one_is_task_arithmetic(pipeline):
    # Prepare: mixed ranks and scalings
    adapters = [random_adapter(9, 7, r, s, seed) for r, s, seed in [(2, 2.0, 0), (3, 0.5, 1), (5, 1.0, 2)]]
    weights = [0.2, -0.5, 0.9]

    # Execute
    merged, error = sparse_task_arithmetic(adapters, weights, 0.7, pipeline=pipeline, density=1.0)

    # Assert
    exact, _ = task_arithmetic(adapters, weights, 0.7)
    assert error == 0.0 and merged.rank == 7  # lossless: min(d_out, d_in)
    assert rel(merged.delta(), exact.delta()) < 1e-10


def test_ties_matches_explicit_computation_for_mixed_ranks():
    # Prepare
    adapters = [random_adapter(10, 8, r, s, seed) for r, s, seed in [(1, 1.0, 3), (4, 2.0, 4), (2, 0.5, 5)]]
    weights = [0.5, 0.3, 0.2]
    deltas = torch.stack([a.delta() for a in adapters])

    # Execute
    merged, error = sparse_task_arithmetic(adapters, weights, 2.0, pipeline="ties", density=0.25)

    # Assert
    k = int(0.25 * 80)
    keep = deltas.abs().reshape(3, -1) >= deltas.abs().reshape(3, -1).topk(k, dim=1).values[:, -1:]
    trimmed = deltas * keep.reshape(deltas.shape)
    sign = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)
    agree = trimmed.sign() == sign
    w = torch.tensor(weights, dtype=torch.float64)[:, None, None]
    expected = 2.0 * (w * trimmed * agree).sum(0) / (w * agree).sum(0).clamp(min=1e-300)
    assert error == 0.0
    assert rel(merged.delta(), expected) < 1e-10


def test_truncated_rank_reports_eckart_young_error():
    # Prepare
    adapters = [random_adapter(12, 10, 3, 1.0, seed) for seed in range(3)]

    # Execute
    full, _ = sparse_task_arithmetic(adapters, [1 / 3] * 3, pipeline="ties", density=0.4)
    merged, error = sparse_task_arithmetic(adapters, [1 / 3] * 3, rank=4, pipeline="ties", density=0.4)

    # Assert
    s = torch.linalg.svdvals(full.delta())
    assert merged.rank == 4
    assert error == pytest.approx((s[4:].square().sum() / s.square().sum()).sqrt().item(), rel=1e-8)
    assert rel(merged.delta(), full.delta()) == pytest.approx(error, rel=1e-8)


def test_dare_is_reproducible_and_unbiased_on_average():
    # Prepare
    adapters = [random_adapter(40, 30, 4, 1.0, seed) for seed in (7, 8)]
    exact, _ = task_arithmetic(adapters, [0.5, 0.5])

    # Execute
    runs = [
        sparse_task_arithmetic(adapters, [0.5, 0.5], pipeline="dare_linear", density=0.5, seed=s)[0] for s in range(20)
    ]
    again, _ = sparse_task_arithmetic(adapters, [0.5, 0.5], pipeline="dare_linear", density=0.5, seed=0)

    # Assert: a seed fixes the result; the mean over seeds approaches the exact sum (error ~ 1/sqrt(20))
    torch.testing.assert_close(again.delta(), runs[0].delta())
    assert rel(runs[1].delta(), runs[0].delta()) > 0.1
    single = rel(runs[0].delta(), exact.delta())
    averaged = rel(sum(r.delta() for r in runs) / 20, exact.delta())
    assert averaged < single / 3


def test_float32_adapters_give_float32_factors():
    adapters = [random_adapter(8, 8, 2, 2.0, seed, dtype=torch.float32) for seed in range(2)]
    merged, _ = sparse_task_arithmetic(adapters, [0.5, 0.5], rank=3, pipeline="ties", density=0.5)
    assert merged.A.dtype == merged.B.dtype == torch.float32 and merged.rank == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pipeline": "ties", "density": 0.0}, r"density .* must be in \(0, 1\], got 0.0"),
        ({"pipeline": "ties", "density": 1.5}, r"must be in \(0, 1\], got 1.5"),
        (
            {"pipeline": "tie", "density": 0.5},
            r"unknown pipeline 'tie'; choose one of \['breadcrumbs', 'breadcrumbs_ties', 'dare_linear'",
        ),
        (
            {"pipeline": "ties", "density": 0.5, "majority_sign_method": "mean"},
            r"choose one of \['total', 'frequency'\]",
        ),
        ({"pipeline": "ties", "density": 0.5, "normalize": "sum"}, r"choose one of \['weights', 'count'\]"),
        ({"pipeline": "dare_ties", "density": 0.5, "seed": 1.5}, "seed must be an int"),
    ],
)
def test_sparse_task_arithmetic_validates(kwargs, message):
    adapters = [random_adapter(4, 4, 2, 1.0, 0)]
    with pytest.raises(ValueError, match=message):
        sparse_task_arithmetic(adapters, [1.0], **kwargs)


def test_every_pipeline_cites_a_paper():
    assert all(p.paper.startswith("https://arxiv.org/abs/") for p in PIPELINES.values())
