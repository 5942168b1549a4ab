"""Algebraic properties every registered merge method should have (hypothesis)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.merging import MERGE_METHODS, get_merge_method
from tests.merging.factories import random_adapter

SMALL = settings(max_examples=12, deadline=None)
ALL = sorted(MERGE_METHODS)
# DARE draws its masks in hospital order, so permuting hospitals permutes the masks
DETERMINISTIC = [name for name in ALL if "dare" not in name and "della" not in name]
SAME_RANK_ONLY = {"fedit", "linear", "fisher"}
# data-aware methods read each hospital's statistics and take weights >= 0 (a Gram or Fisher is not negated)
DATA_AWARE = {name for name in ALL if MERGE_METHODS[name].stats}


def statistics(name, adapter):
    """Statistics of one adapter, drawn from its own values (so they move with it when hospitals are permuted)."""
    g = torch.Generator().manual_seed(int(adapter.A.abs().sum().item() * 1e6) % 2**31)
    if MERGE_METHODS[name].stats == "gram":
        x = torch.randn(3 * adapter.d_in, adapter.d_in, generator=g, dtype=torch.float64)
        return {"gram": x.T @ x / len(x)}
    return {
        "fisher_A": torch.rand(adapter.A.shape, generator=g, dtype=torch.float64),
        "fisher_B": torch.rand(adapter.B.shape, generator=g, dtype=torch.float64),
    }


def merge(name, adapters, weights, scale=1.0, rank=None, **params):
    method = get_merge_method(name)
    params = {k: v for k, v in params.items() if k in method.params}
    stats = {"stats": [statistics(name, a) for a in adapters]} if name in DATA_AWARE else {}
    merged, error = method.fn(adapters, weights, scale, rank, **stats, **method.resolve(params))
    return merged.delta(), error


def naive_sum(adapters, weights, scale=1.0):
    return scale * sum(w * a.delta() for a, w in zip(adapters, weights))


def close(x, y, tol=1e-8):
    torch.testing.assert_close(x, y, rtol=tol, atol=tol * max(1.0, torch.linalg.norm(y).item()))


def hospital_adapters(name, specs, first_seed):
    """(5 x 6) adapters of the given (rank, scale) specs; one rank (the first) for methods that need it."""
    if name in SAME_RANK_ONLY:
        specs = [(specs[0][0], s) for _, s in specs]
    return [random_adapter(5, 6, r, s, seed=first_seed + i) for i, (r, s) in enumerate(specs)]


adapter_specs = st.lists(st.tuples(st.integers(1, 4), st.floats(0.25, 4.0)), min_size=1, max_size=4)


@SMALL
@given(
    d_out=st.integers(2, 7),
    d_in=st.integers(2, 7),
    r=st.integers(1, 4),
    s=st.floats(0.25, 4.0),
    seed=st.integers(0, 999),
)
@pytest.mark.parametrize("name", ALL)
def test_one_adapter_merges_to_itself(name, d_out, d_in, r, s, seed):
    # Prepare: nothing trimmed or dropped (density 1)
    adapter = random_adapter(d_out, d_in, r, s, seed)

    # Execute
    delta, error = merge(name, [adapter], [1.0], density=1.0)

    # Assert
    assert error == 0.0
    close(delta, adapter.delta())


@SMALL
@given(specs=adapter_specs, data=st.data())
@pytest.mark.parametrize("name", [n for n in ALL if n not in DATA_AWARE])
def test_negating_the_weights_negates_the_merge(name, specs, data):
    # Prepare: weight -1 on one adapter, or all weights negated
    adapters = hospital_adapters(name, specs, first_seed=0)
    weights = data.draw(st.lists(st.floats(0.1, 2.0), min_size=len(specs), max_size=len(specs)))

    # Execute
    delta, _ = merge(name, adapters, weights, density=0.5, seed=3)
    negated, _ = merge(name, adapters, [-w for w in weights], density=0.5, seed=3)

    # Assert
    close(negated, -delta)


@SMALL
@given(specs=adapter_specs, data=st.data())
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_the_order_of_hospitals_does_not_matter(name, specs, data):
    # Prepare
    adapters = hospital_adapters(name, specs, first_seed=10)
    weights = data.draw(
        st.lists(st.floats(-2.0, 2.0).filter(lambda w: abs(w) > 0.05), min_size=len(specs), max_size=len(specs))
    )
    order = data.draw(st.permutations(range(len(specs))))
    if name in DATA_AWARE:  # their weights scale statistics, which are never negated
        weights = [abs(w) for w in weights]

    # Execute
    delta, _ = merge(name, adapters, weights, density=0.5)
    permuted, _ = merge(name, [adapters[i] for i in order], [weights[i] for i in order], density=0.5)

    # Assert
    close(permuted, delta, tol=1e-7)


@SMALL
@given(specs=adapter_specs, scale=st.floats(-2.0, 2.0), data=st.data())
def test_cat_is_exact_concatenation(specs, scale, data):
    # Prepare
    adapters = [random_adapter(6, 5, r, s, seed=20 + i) for i, (r, s) in enumerate(specs)]
    weights = data.draw(st.lists(st.floats(-2.0, 2.0), min_size=len(specs), max_size=len(specs)))

    # Execute
    method = get_merge_method("cat")
    merged, error = method.fn(adapters, weights, scale, None, **method.resolve())

    # Assert
    assert error == 0.0 and merged.rank == sum(r for r, _ in specs)
    close(merged.delta(), naive_sum(adapters, weights, scale), tol=1e-10)


@SMALL
@given(specs=adapter_specs, d_out=st.integers(2, 9), d_in=st.integers(2, 9), data=st.data())
def test_svd_at_full_rank_is_exact(specs, d_out, d_in, data):
    # Prepare
    adapters = [random_adapter(d_out, d_in, r, s, seed=30 + i) for i, (r, s) in enumerate(specs)]
    weights = data.draw(st.lists(st.floats(-2.0, 2.0), min_size=len(specs), max_size=len(specs)))
    full = sum(r for r, _ in specs)

    # Execute
    delta, error = merge("svd", adapters, weights, rank=full)

    # Assert
    assert error == 0.0
    close(delta, naive_sum(adapters, weights), tol=1e-9)


@pytest.mark.parametrize("name", [n for n in ALL if n != "cat"])  # cat keeps every factor and takes no rank
def test_truncated_error_is_reported(name):
    # every method re-factors to a requested rank and reports the truncation it made
    adapters = [random_adapter(8, 8, 3, 1.0, seed) for seed in range(3)]
    if name == "model_stock":  # unrelated updates have cosine ~0 and model_stock merges them to 0: correlate them
        shared = random_adapter(8, 8, 3, 1.0, 99)
        adapters = [type(a)(A=shared.A + 0.3 * a.A, B=shared.B + 0.3 * a.B, scale=1.0) for a in adapters]
    merged_full, _ = merge(name, adapters, [1 / 3] * 3, density=0.5)
    merged, error = merge(name, adapters, [1 / 3] * 3, rank=2, density=0.5)
    assert 0.0 < error < 1.0
    assert torch.linalg.matrix_rank(merged).item() <= 2
    rel = (torch.linalg.norm(merged - merged_full) / torch.linalg.norm(merged_full)).item()
    assert rel == pytest.approx(error, rel=1e-6)


@pytest.mark.parametrize("name", sorted(DATA_AWARE))
def test_data_aware_methods_refuse_negative_weights(name):
    adapters = [random_adapter(5, 6, 2, 1.0, seed) for seed in range(2)]
    with pytest.raises(ValueError, match=">= 0"):
        merge(name, adapters, [1.0, -1.0])
