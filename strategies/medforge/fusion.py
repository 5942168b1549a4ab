"""MedForge-Fusion: the main branch as a coefficient-weighted sum of adapters, in parameter space.

form "delta" (default, exact): ΔW = Σ_i w_i · s_i · B_i A_i, kept in LoRA form by concatenating
the factors (search) and re-factoring losslessly with a thin SVD (stored version).
form "factors" (the reference code's): A = Σ w_i A_i and B = Σ w_i s_i B_i separately; the
product then holds cross terms w_i w_j B_i A_j, so it is not Σ w_i ΔW_i. Kept by name to compare.
level "whole": one coefficient per adapter; "layer": one per adapter per LoRA module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from strategies.merging import LoraFactors, lora_modules_to_state, task_arithmetic
from strategies.merging.adapters import pad_rank

FusionForm = Literal["delta", "factors"]
FusionLevel = Literal["whole", "layer"]
FORMS: tuple[str, ...] = ("delta", "factors")
LEVELS: tuple[str, ...] = ("whole", "layer")

Adapter = Mapping[str, LoraFactors]  # LoRA module path -> factors (with their scale)


def coefficients_per_module(
    flat: Sequence[float], modules: Sequence[str], n_adapters: int, level: FusionLevel
) -> list[dict[str, float]]:
    """Searched vector -> per adapter, per module coefficient. `layer` lays them out adapter-major."""
    if level not in LEVELS:
        raise ValueError(f"strategy.level={level!r} is not valid; choose one of {LEVELS}.")
    expected = n_adapters if level == "whole" else n_adapters * len(modules)
    if len(flat) != expected:
        raise ValueError(
            f"level {level!r} with {n_adapters} adapters and {len(modules)} modules needs {expected} coefficients, got {len(flat)}."
        )
    if level == "whole":
        return [{m: float(flat[i]) for m in modules} for i in range(n_adapters)]
    return [{m: float(flat[i * len(modules) + j]) for j, m in enumerate(modules)} for i in range(n_adapters)]


def n_coefficients(n_adapters: int, n_modules: int, level: FusionLevel) -> int:
    return n_adapters if level == "whole" else n_adapters * n_modules


@torch.no_grad()
def fuse(
    adapters: Sequence[Adapter],
    coefficients: Sequence[Mapping[str, float]],
    form: FusionForm = "delta",
    compact: bool = True,
    like: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], int]:
    """The fused LoRA state (scale 1, one rank for all modules) and its rank.

    compact=False keeps the concatenated factors (rank Σ r_i, cheap: used inside the search).
    like: a hospital state in PEFT's layout, so Conv2d factors get their kernel shape back.
    """
    if form not in FORMS:
        raise ValueError(f"strategy.form={form!r} is not valid; choose one of {FORMS}.")
    modules = list(adapters[0])
    fused: dict[str, LoraFactors] = {}
    for module in modules:
        factors = [a[module] for a in adapters]
        weights = [c[module] for c in coefficients]
        if form == "factors":
            fused[module] = _factor_wise(factors, weights)
        else:
            fused[module], _ = task_arithmetic(factors, weights, form="svd" if compact else "cat")
    rank = max(f.rank for f in fused.values())
    return lora_modules_to_state({m: pad_rank(f, rank) for m, f in fused.items()}, like=like), rank


def _factor_wise(factors: Sequence[LoraFactors], weights: Sequence[float]) -> LoraFactors:
    ranks = {f.rank for f in factors}
    if len(ranks) != 1:
        raise ValueError(f"form 'factors' needs adapters of one rank, got ranks {sorted(ranks)}; use form 'delta'.")
    A = sum(w * f.A for f, w in zip(factors, weights))
    B = sum(w * f.scale * f.B for f, w in zip(factors, weights))
    return LoraFactors(A=A, B=B, scale=1.0)
