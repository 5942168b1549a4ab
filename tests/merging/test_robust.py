"""Byzantine-robust merges: one wild adapter among five barely moves the median or the trimmed mean."""

import pytest
import torch

from strategies.merging import LoraFactors, get_merge_method, task_arithmetic
from strategies.merging.robust import coordinate_median, trimmed_mean


def factors(seed: int, gain: float = 1.0) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    base = torch.Generator().manual_seed(99)
    A = torch.randn(4, 12, generator=base, dtype=torch.float64)
    B = torch.randn(10, 4, generator=base, dtype=torch.float64) + 0.1 * torch.randn(
        10, 4, generator=g, dtype=torch.float64
    )
    return LoraFactors(A=A, B=gain * B, scale=2.0)


def test_median_of_odd_and_even_counts_is_the_coordinate_wise_median():
    for n in (3, 4):
        adapters = [factors(i) for i in range(n)]
        merged, error = coordinate_median(adapters, [1 / n] * n)
        expected = torch.stack([a.delta() for a in adapters]).quantile(0.5, dim=0)
        assert torch.allclose(merged.delta(), expected, atol=1e-9) and error == pytest.approx(0.0, abs=1e-12)


def test_trimmed_mean_drops_the_extremes_per_coordinate():
    adapters = [factors(i) for i in range(5)]
    merged, _ = trimmed_mean(adapters, [0.2] * 5, trim=0.2)
    ordered = torch.stack([a.delta() for a in adapters]).sort(dim=0).values
    assert torch.allclose(merged.delta(), ordered[1:4].mean(dim=0), atol=1e-9)
    with pytest.raises(ValueError, match="trim must be in"):
        trimmed_mean(adapters, [0.2] * 5, trim=0.5)


@pytest.mark.parametrize("method", ["median", "trimmed_mean"])
def test_one_wild_adapter_barely_moves_a_robust_merge(method):
    honest = [factors(i) for i in range(4)]
    wild = factors(7, gain=-100.0)
    weights = [0.2] * 5
    reference, _ = task_arithmetic(honest, [0.25] * 4)
    robust, _ = get_merge_method(method).fn(honest + [wild], weights, **get_merge_method(method).resolve())
    plain, _ = task_arithmetic(honest + [wild], weights)

    def off(m):
        return float((m.delta() - reference.delta()).norm() / reference.delta().norm())

    assert off(robust) < 0.2 < 10 < off(plain)
