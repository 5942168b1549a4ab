"""The coefficient search: geometries, the start, the L1 reference, batches."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.medforge.search import (
    SearchSettings,
    from_coefficients,
    objective,
    search_coefficients,
    to_coefficients,
)


def bowl(target):
    target = np.asarray(target, dtype=float)
    return lambda w: float(((np.asarray(w) - target) ** 2).sum())


@pytest.mark.parametrize("geometry", ["convex", "affine"])
def test_constrained_geometries_sum_to_one_at_every_evaluated_point(geometry):
    settings = SearchSettings(geometry=geometry, budget=30, seed=1)
    result = search_coefficients(bowl([3.0, -1.0, 0.2]), 3, settings)
    for w, _ in result.trace:
        assert sum(w) == pytest.approx(1.0, abs=1e-9)
        if geometry == "convex":
            assert min(w) >= 0.0
    assert sum(result.coefficients) == pytest.approx(1.0, abs=1e-9)


def test_convex_coefficients_are_non_negative_even_when_the_loss_wants_negatives():
    result = search_coefficients(bowl([-2.0, 3.0]), 2, SearchSettings(geometry="convex", budget=40, seed=0))
    assert min(result.coefficients) >= 0.0
    assert result.coefficients[1] > 0.9  # as close as the simplex allows to (−2, 3)


def test_the_box_lets_the_sum_grow_the_constrained_geometries_do_not():
    wants_amplification = bowl([1.4, 1.4, 1.4, 1.4])  # the multi-center failure: every coefficient near its bound
    box = search_coefficients(wants_amplification, 4, SearchSettings(budget=60, seed=0, l1=0.0))
    convex = search_coefficients(wants_amplification, 4, SearchSettings(geometry="convex", budget=60, seed=0))
    assert sum(box.coefficients) > 3.0
    assert sum(convex.coefficients) == pytest.approx(1.0)


@pytest.mark.parametrize("geometry", ["box", "convex", "affine"])
def test_a_search_started_at_given_weights_never_returns_a_worse_objective(geometry):
    start = [0.2, 0.5, 0.3]
    settings = SearchSettings(geometry=geometry, start="data_free", l1_from="start", budget=12, seed=4)
    noisy = np.random.default_rng(0)
    loss = lambda w: float(noisy.normal() + 5.0)  # noqa: E731 - a loss with no signal at all
    result = search_coefficients(loss, 3, settings, start)
    assert result.trace[0][0] == pytest.approx(tuple(start))  # the start is evaluated first
    assert result.objective <= result.start_objective
    assert result.start == pytest.approx(start)


def test_l1_from_the_start_costs_nothing_at_the_start_and_the_paper_l1_does():
    w0 = np.array([0.2, 0.8])
    assert objective(1.0, w0, 0.5, reference=w0) == 1.0
    assert objective(1.0, w0, 0.5) == pytest.approx(1.25)


@pytest.mark.parametrize("geometry", ["convex", "affine"])
def test_a_start_maps_to_itself(geometry):
    w = np.array([0.1, 0.6, 0.3])
    np.testing.assert_allclose(to_coefficients(from_coefficients(w, geometry), geometry), w, atol=1e-9)


def test_batches_ask_several_candidates_per_call_and_keep_the_budget():
    calls = []

    def batch_loss(ws):
        calls.append(len(ws))
        return [bowl([0.3, 0.7])(w) for w in ws]

    settings = SearchSettings(optimizer="CMA", geometry="convex", budget=20, seed=0)
    result = search_coefficients(None, 2, settings, batch_loss=batch_loss, batch=8)
    assert calls == [8, 8, 4]
    assert result.evaluations == 20 and len(result.trace) == 20
    assert result.loss < 0.01


def test_an_optimizer_that_cannot_batch_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="use CMA"):
        search_coefficients(None, 2, SearchSettings(budget=20), batch_loss=lambda ws: [0.0] * len(ws), batch=8)


def test_unknown_settings_fail_naming_the_key():
    with pytest.raises(ValueError, match="geometry"):
        SearchSettings(geometry="sphere")
    with pytest.raises(ValueError, match="l1_from"):
        SearchSettings(l1_from="median")
