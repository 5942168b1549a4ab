"""Fisher merging: equal Fishers give the plain average, a dominant Fisher wins, factors are checked."""

import pytest
import torch

from strategies.merging import fedit
from strategies.merging.fisher import fisher, fisher_average, fisher_heads
from tests.merging.factories import random_adapter, rel


def fishers_like(adapter, value=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = (
        (lambda t: torch.full_like(t, value))
        if value is not None
        else (lambda t: torch.rand(t.shape, generator=g, dtype=t.dtype))
    )
    return {"fisher_A": make(adapter.A), "fisher_B": make(adapter.B)}


def test_equal_fishers_give_the_plain_weighted_average_of_the_factors():
    # Prepare
    adapters = [random_adapter(5, 4, 3, s, seed) for seed, s in enumerate([2.0, 2.0, 2.0])]
    weights = [0.5, 0.3, 0.2]

    # Execute
    merged, error = fisher(adapters, weights, stats=[fishers_like(a, 0.7) for a in adapters])
    plain, _ = fedit(adapters, weights)

    # Assert: FedIT, the factors averaged with the merge weights
    assert error == 0.0
    assert rel(merged.delta(), plain.delta()) < 1e-10


def test_fisher_average_is_elementwise_and_follows_the_larger_fisher():
    a, b = torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])
    merged = fisher_average([a, b], [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])], [0.5, 0.5], floor=1e-12)
    torch.testing.assert_close(merged, torch.tensor([2.0, 3.0], dtype=torch.float64))


def test_one_adapter_merges_to_itself_and_heads_average_by_fisher():
    adapter = random_adapter(4, 3, 2, 1.5, 0)
    merged, _ = fisher([adapter], [1.0], stats=[fishers_like(adapter, seed=1)])
    assert rel(merged.delta(), adapter.delta()) < 1e-12
    heads = [{"weight": torch.ones(2, 3)}, {"weight": 3 * torch.ones(2, 3)}]
    merged_heads = fisher_heads(heads, [{"weight": torch.ones(2, 3)}, {"weight": 3 * torch.ones(2, 3)}], [0.5, 0.5])
    torch.testing.assert_close(merged_heads["weight"], 2.5 * torch.ones(2, 3))


def test_fisher_refuses_mixed_ranks_missing_fishers_and_negative_weights():
    adapters = [random_adapter(4, 3, 2, 1.0, 0), random_adapter(4, 3, 3, 1.0, 1)]
    with pytest.raises(ValueError, match="needs one rank"):
        fisher(adapters, [0.5, 0.5], stats=[fishers_like(a) for a in adapters])
    same = [random_adapter(4, 3, 2, 1.0, s) for s in range(2)]
    with pytest.raises(ValueError, match=r"strategy.stats=\[fisher\]"):
        fisher(same, [0.5, 0.5], stats=[fishers_like(same[0]), {}])
    with pytest.raises(ValueError, match="weights >= 0"):
        fisher(same, [1.0, -0.5], stats=[fishers_like(a) for a in same])
