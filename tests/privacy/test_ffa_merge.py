"""FFA-LoRA's promise: with one shared A, task arithmetic is FedAvg of the Bs, exactly."""

from __future__ import annotations

import torch

from strategies.merging.lowrank import LoraFactors, task_arithmetic


def test_task_arithmetic_of_adapters_sharing_a_is_the_average_of_their_bs():
    generator = torch.Generator().manual_seed(0)
    shared_a = torch.randn(4, 32, generator=generator, dtype=torch.float64)
    bs = [torch.randn(24, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]

    merged, _ = task_arithmetic([LoraFactors(shared_a, b, scale=2.0) for b in bs], weights)

    fedavg_of_b = sum(w * b for w, b in zip(weights, bs))
    assert torch.allclose(merged.delta(), 2.0 * fedavg_of_b @ shared_a, atol=1e-12)
    truncated, error = task_arithmetic([LoraFactors(shared_a, b, scale=2.0) for b in bs], weights, rank=4)
    assert error < 1e-12  # within the shared A's row space: merge_rank = r loses nothing
    assert torch.allclose(truncated.delta(), merged.delta(), atol=1e-12)
