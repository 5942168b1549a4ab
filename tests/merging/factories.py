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


def state_statistics(state, kind, seed):
    """What a hospital would send: a PSD Gram per LoRA module and head (features + 1), or a Fisher per tensor."""
    g = torch.Generator().manual_seed(seed)
    if kind == "fisher":
        return {f"{key}.fisher": torch.rand(t.shape, generator=g) for key, t in state.items()}
    stats = {}
    for key, t in state.items():
        if key.endswith(".lora_A.weight"):
            stats[key[: -len(".lora_A.weight")] + ".gram"] = t[0].numel()  # a kernel flattens (C·kh·kw)
        elif ".heads." in key and key.endswith(".weight"):
            stats[key[: -len(".weight")] + ".gram"] = t.shape[1] + 1
    return {k: (x := torch.randn(3 * d, d, generator=g)).T @ x / (3 * d) for k, d in stats.items()}
