"""MedForge-Fusion and -Mixture math, and the coefficient search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_app.model.mixture import mixture_loss, mixture_probabilities, mixture_scores
from strategies.medforge.fusion import coefficients_per_module, fuse
from strategies.medforge.search import SearchSettings, search_coefficients
from strategies.merging import LoraFactors, split_lora_modules

MODULES = ["layers.0.q_proj", "layers.1.q_proj"]


def adapter(seed: int, rank: int = 4, scale: float = 2.0) -> dict[str, LoraFactors]:
    generator = torch.Generator().manual_seed(seed)
    return {
        m: LoraFactors(
            A=torch.randn(rank, 12, generator=generator), B=torch.randn(10, rank, generator=generator), scale=scale
        )
        for m in MODULES
    }


def delta(state: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    return state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"]


def test_fusion_with_one_zero_returns_the_old_main_branch():
    main, new = adapter(0), adapter(1, rank=2)
    fused, _ = fuse([main, new], coefficients_per_module([1.0, 0.0], MODULES, 2, "whole"))
    for m in MODULES:
        torch.testing.assert_close(delta(fused, m), main[m].delta(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("compact", [True, False])
def test_delta_fusion_is_exactly_the_weighted_sum_of_updates(compact):
    adapters, w = [adapter(0), adapter(1), adapter(2, rank=8, scale=0.5)], [0.7, -0.4, 1.3]
    fused, rank = fuse(adapters, coefficients_per_module(w, MODULES, 3, "whole"), compact=compact)
    assert rank == (10 if compact else 16)  # lossless: min(Σ r_i, d_out) after the SVD, Σ r_i concatenated
    for m in MODULES:
        expected = sum(wi * a[m].delta() for wi, a in zip(w, adapters))
        torch.testing.assert_close(delta(fused, m), expected, rtol=1e-4, atol=1e-4)


def test_layer_level_gives_each_module_its_own_coefficients():
    main, new = adapter(0), adapter(1)
    flat = [1.0, 0.0, 0.0, 1.0]  # main: (layer 0: 1, layer 1: 0); new: (layer 0: 0, layer 1: 1)
    fused, _ = fuse([main, new], coefficients_per_module(flat, MODULES, 2, "layer"))
    torch.testing.assert_close(delta(fused, MODULES[0]), main[MODULES[0]].delta(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(delta(fused, MODULES[1]), new[MODULES[1]].delta(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs 4 coefficients"):
        coefficients_per_module([1.0, 0.0], MODULES, 2, "layer")


def test_factor_wise_form_has_cross_terms_and_needs_one_rank():
    a, b = adapter(0), adapter(1)
    fused, _ = fuse([a, b], coefficients_per_module([0.5, 0.5], MODULES, 2, "whole"), form="factors")
    exact = 0.5 * a[MODULES[0]].delta() + 0.5 * b[MODULES[0]].delta()
    assert not torch.allclose(delta(fused, MODULES[0]), exact, atol=1e-3)
    with pytest.raises(ValueError, match="one rank"):
        fuse([a, adapter(2, rank=2)], coefficients_per_module([0.5, 0.5], MODULES, 2, "whole"), form="factors")


def test_fused_state_reloads_as_the_same_update():
    fused, _ = fuse([adapter(0), adapter(1)], coefficients_per_module([0.3, 0.9], MODULES, 2, "whole"))
    again, _ = fuse([split_lora_modules(fused, 1.0)], [{m: 1.0 for m in MODULES}])
    for m in MODULES:
        torch.testing.assert_close(delta(again, m), delta(fused, m), rtol=1e-5, atol=1e-5)


def test_mixture_of_one_adapter_is_that_adapter():
    p = torch.softmax(torch.randn(20, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    for c in (1.0, 0.3):
        torch.testing.assert_close(mixture_probabilities([p], [c]), p)


def test_mixture_mixes_probabilities_and_its_loss_is_cross_entropy_when_normalised():
    g = torch.Generator().manual_seed(1)
    p1, p2 = torch.softmax(torch.randn(8, 3, generator=g), -1), torch.softmax(torch.randn(8, 3, generator=g), -1)
    labels = torch.randint(3, (8, 1), generator=g)
    mixed = mixture_probabilities([p1, p2], [0.25, 0.75])
    torch.testing.assert_close(mixed, 0.25 * p1 + 0.75 * p2)
    ce = float(torch.nn.functional.nll_loss(torch.log(mixed), labels[:, 0]))
    assert mixture_loss(mixture_scores([p1, p2], [0.25, 0.75]), labels) == pytest.approx(ce, rel=1e-5)
    # scale matters: shrinking every coefficient is penalised (L1 cannot collapse them to zero)
    assert mixture_loss(mixture_scores([p1, p2], [0.025, 0.075]), labels) > ce + 1.0


def test_search_is_seeded_bounded_and_never_worse_than_its_start():
    target = np.array([1.2, -0.7, 0.1])

    def loss(w):
        return float(((w - target) ** 2).sum())

    settings = SearchSettings(budget=60, seed=3)
    result = search_coefficients(loss, 3, settings)
    assert result == search_coefficients(loss, 3, settings)
    assert all(-1.5 <= w <= 1.5 for w in result.coefficients)
    assert result.objective < result.start_objective
    assert np.abs(np.array(result.coefficients) - target).max() < 0.3
    assert result.objective == pytest.approx(result.loss + 0.05 * np.abs(result.coefficients).mean())


def test_search_settings_fail_clearly():
    with pytest.raises(ValueError, match="not a nevergrad optimizer"):
        SearchSettings(optimizer="Nope")
    with pytest.raises(ValueError, match="lower must be < upper"):
        SearchSettings(lower=1.0, upper=-1.0)
