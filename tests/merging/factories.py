"""Random LoRA factors and a relative error: what the merge tests build and compare with."""

from __future__ import annotations

import torch

from strategies.merging.lowrank import LoraFactors


def random_adapter(d_out: int, d_in: int, r: int, scale: float, seed: int, dtype=torch.float64) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(
        A=torch.randn(r, d_in, generator=g, dtype=dtype), B=torch.randn(d_out, r, generator=g, dtype=dtype), scale=scale
    )


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    """Relative Frobenius error of x against y, in float64."""
    return (torch.linalg.norm(x.double() - y.double()) / torch.linalg.norm(y.double())).item()
