"""Model Breadcrumbs, DELLA, Model Stock and SCE against their reference formulas on small dense matrices.

The references are written out here entry by entry (sorting, loops), independently of the pipeline's
vectorised code, following the papers and mergekit's merge_methods (sparsify.py, sce.py, model_stock.py).
"""

import itertools
import math

import pytest
import torch

from strategies.merging import get_merge_method
from strategies.merging.lowrank import LoraFactors
from strategies.merging.sparsify import magprune
from tests.merging.factories import random_adapter, rel


def merge(name, adapters, weights, **params):
    method = get_merge_method(name)
    merged, error = method.fn(adapters, weights, 1.0, None, **method.resolve(params))
    return merged.delta()


def correlated(n=3, d_out=6, d_in=5, r=2, noise=0.5):
    """Updates sharing a direction (as hospitals fine-tuning one model do), so the methods have something to agree on."""
    shared = random_adapter(d_out, d_in, r, 1.0, 100)
    return [
        LoraFactors(A=shared.A + noise * a.A, B=shared.B + noise * a.B, scale=a.scale)
        for a in (random_adapter(d_out, d_in, r, s, seed) for seed, s in enumerate([1.0, 2.0, 0.5][:n]))
    ]


def breadcrumbs_mask_reference(delta, density, gamma):
    """mergekit magnitude_outliers: sort |x| ascending, drop the n_bot smallest and n_top largest."""
    values = delta.flatten().tolist()
    n = len(values)
    keep, top = int(density * n), int(gamma * n)
    bottom = n - keep - top
    if bottom < 0:
        top, bottom = top + bottom, 0
    order = sorted(range(n), key=lambda i: abs(values[i]))  # stable, as the implementation's
    kept = set(order[bottom : n - top])
    return torch.tensor([v if i in kept else 0.0 for i, v in enumerate(values)], dtype=delta.dtype).reshape(delta.shape)


def ties_reference(masked, weights):
    """Elect the sign of the summed entries; per entry, Σ_agree w x / Σ_agree |w| (mergekit's normalisation)."""
    out = torch.zeros_like(masked[0])
    for index in itertools.product(*(range(s) for s in out.shape)):
        entries = [m[index].item() for m in masked]
        sign = 1.0 if sum(entries) >= 0 else -1.0
        agree = [(w, x) for w, x in zip(weights, entries) if x * sign > 0]
        total = sum(abs(w) for w, _ in agree)
        out[index] = sum(w * x for w, x in agree) / total if total > 0 else 0.0
    return out


@pytest.mark.parametrize(("density", "gamma"), [(0.6, 0.1), (0.9, 0.01), (0.5, 0.7)])
def test_breadcrumbs_is_the_weighted_sum_of_the_outlier_and_small_entry_masked_updates(density, gamma):
    adapters, weights = correlated(), [0.5, 0.3, 0.2]
    masked = [breadcrumbs_mask_reference(a.delta(), density, gamma) for a in adapters]
    expected = sum(w * m for w, m in zip(weights, masked))
    assert rel(merge("breadcrumbs", adapters, weights, density=density, gamma=gamma), expected) < 1e-10


def test_breadcrumbs_ties_elects_signs_on_the_masked_updates():
    adapters, weights = correlated(), [0.5, 0.3, 0.2]
    masked = [breadcrumbs_mask_reference(a.delta(), 0.6, 0.1) for a in adapters]
    expected = ties_reference(masked, weights)
    assert rel(merge("breadcrumbs_ties", adapters, weights, density=0.6, gamma=0.1), expected) < 1e-10


def magprune_reference(deltas, density, epsilon, seed):
    """DELLA MAGPRUNE: per row, keep probability density - ε + 2ε·rank/(n-1) by ascending magnitude, rescale by 1/p."""
    draws = torch.rand(deltas.shape, generator=torch.Generator().manual_seed(seed), dtype=deltas.dtype)
    out = torch.zeros_like(deltas)
    n = deltas.shape[-1]
    for a, i in itertools.product(range(deltas.shape[0]), range(deltas.shape[1])):
        row = deltas[a, i].tolist()
        order = sorted(range(n), key=lambda j: abs(row[j]))
        for rank, j in enumerate(order):
            p = density - epsilon + 2 * epsilon * rank / (n - 1)
            out[a, i, j] = row[j] / p if draws[a, i, j] < p else 0.0
    return out


def test_della_is_magprune_then_ties_with_the_same_draws():
    adapters, weights = correlated(), [0.5, 0.3, 0.2]
    deltas = torch.stack([a.delta() for a in adapters])
    pruned = magprune_reference(deltas, 0.6, 0.2, seed=7)
    assert (
        rel(merge("della", adapters, weights, density=0.6, epsilon=0.2, seed=7), ties_reference(pruned, weights))
        < 1e-10
    )
    linear = sum(w * p for w, p in zip(weights, pruned))
    assert rel(merge("della_linear", adapters, weights, density=0.6, epsilon=0.2, seed=7), linear) < 1e-10


def test_magprune_keeps_the_expected_update():
    # its rescaling makes every entry unbiased: the mean over many draws approaches the update itself
    delta = random_adapter(4, 6, 2, 1.0, 3).delta()[None]
    generator = torch.Generator().manual_seed(0)
    mean = sum(magprune(delta, 0.5, 0.3, generator) for _ in range(4000)) / 4000
    assert rel(mean, delta) < 0.05


def test_model_stock_from_the_factors_is_the_dense_formula():
    # Prepare
    adapters, weights = correlated(), [0.5, 0.3, 0.2]
    deltas = [a.delta().flatten() for a in adapters]
    cosines = [
        torch.dot(deltas[i], deltas[j]) / (deltas[i].norm() * deltas[j].norm()) for i, j in [(0, 1), (0, 2), (1, 2)]
    ]
    cosine = float(sum(cosines) / 3)
    t = 3 * cosine / (1 + 2 * cosine)
    expected = t * sum(w * a.delta() for w, a in zip(weights, adapters)) / sum(weights)

    # Execute
    merged = merge("model_stock", adapters, weights)

    # Assert
    assert 0 < t < 1 and rel(merged, expected) < 1e-10


def test_model_stock_of_one_adapter_and_of_identical_adapters_is_the_adapter():
    adapter = random_adapter(5, 4, 2, 1.5, 0)
    assert rel(merge("model_stock", [adapter], [1.0]), adapter.delta()) < 1e-12
    assert rel(merge("model_stock", [adapter, adapter], [0.5, 0.5]), adapter.delta()) < 1e-12


def sce_reference(deltas, select_topk):
    """mergekit sce_merge on stacked task vectors (select -> erase -> calculate), transcribed."""
    if select_topk < 1:
        variance = torch.var(deltas, dim=0, unbiased=False)
        k = int(torch.count_nonzero(variance) * select_topk)
        mask = torch.zeros_like(variance)
        mask.view(-1)[torch.topk(variance.abs().view(-1), k=k, largest=True).indices] = 1
        deltas = deltas * mask.unsqueeze(0)
    sign = (deltas.sum(dim=0) >= 0) * 2 - 1
    erase = deltas.sign() == sign
    squares = torch.mean(deltas**2, dim=list(range(1, deltas.dim())))
    weights = squares / squares.sum() if abs(squares.sum().item()) >= 1e-6 else torch.ones_like(squares) / len(squares)
    erased = weights.view(-1, 1, 1) * erase
    return (deltas * erased).sum(dim=0) / erased.sum(dim=0).clamp(min=1e-6)


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.2])
def test_sce_matches_mergekit_with_weights_summing_to_one(select_topk):
    adapters = correlated()
    deltas = torch.stack([a.delta() for a in adapters])
    merged = merge("sce", adapters, [0.5, 0.3, 0.2], select_topk=select_topk)
    assert rel(merged, sce_reference(deltas, select_topk)) < 1e-10
    assert math.isclose(
        rel(merge("sce", adapters, [1.0, 1.0, 1.0], select_topk=select_topk), 3 * merged), 0.0, abs_tol=1e-10
    )
