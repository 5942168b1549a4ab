"""Withdraw or replace one hospital's contribution on a linear version's own factors.

A linear version is ΔW = g · Σ_i c_i · s_i B_i A_i (task arithmetic, MedForge-Fusion in delta
form). Withdrawing hospital K, and renormalising the others' coefficients by a common factor a
(a weighting rule re-applied: uniform, num_examples; a = 1 for explicit or searched ones), gives

    ΔW' = a · (ΔW − g · c_K · s_K B_K A_K)  [+ g · c'_K · s'_K B'_K A'_K for a recommit]

from the version's factors and K's alone, without the other hospitals' adapters. The stacked
factors are re-compressed by the thin QR + small SVD of `task_arithmetic` to the rank a
from-scratch merge has (Σ r_i of the members, clipped by the module's shape): lossless, since
that is the rank of ΔW'. Heads are per-task weighted means, revised the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

from fl_app.adapter_keys import lora_state, non_lora_state
from fl_app.forge.recipe import FUSION, Recipe
from fl_app.remerge.stored import StoredHospital
from strategies.merging import (
    LoraFactors,
    lora_modules_to_state,
    split_heads,
    split_lora_modules,
    task_arithmetic,
)
from strategies.merging.adapters import pad_rank


def common_ratio(old: Recipe, new: Recipe, kept: Sequence[int]) -> float | None:
    """The factor a with new c_i = a · old c_i for every kept hospital, or None when there is none."""
    ratios = []
    for h in kept:
        if old.coefficients[h] == 0.0:
            return None
        ratios.append(new.coefficients[h] / old.coefficients[h])
    if not ratios or any(not math.isclose(r, ratios[0], rel_tol=1e-9) for r in ratios):
        return None
    return ratios[0]


def head_weight(recipe: Recipe, hospital: int) -> float:
    """A hospital's weight in its task's head: its merge weight, 0 if negative (`head_weights`); MedForge's heads are plain means."""
    return 1.0 if recipe.method == FUSION else max(recipe.coefficients[hospital], 0.0)


def heads_revisable(old: Recipe, new: Recipe, hospital: StoredHospital, tasks: Mapping[int, str]) -> bool:
    """True when every hospital of the withdrawn one's task weighs its head (> 0) before and after: then the
    head's weighted mean can be revised in place; otherwise the version is rebuilt from the adapters."""
    holders = [h for h in old.hospitals if tasks[h] == hospital.task]
    return all(head_weight(old, h) > 0 for h in holders) and all(
        head_weight(new, h) > 0 for h in new.hospitals if tasks.get(h) == hospital.task
    )


def _float64(factors: LoraFactors) -> LoraFactors:
    return LoraFactors(A=factors.A.double(), B=factors.B.double(), scale=factors.scale)


def revise_lora(
    version_state: Mapping[str, Tensor],
    version_scale: float,
    terms: Sequence[tuple[StoredHospital, float]],
    ratio: float,
    rank: int,
) -> tuple[dict[str, Tensor], int, float]:
    """ratio · ΔW_version + Σ coefficient · s_h B_h A_h per module, re-factored to `rank`.

    Returns the LoRA state (Conv2d kernels restored, one rank for all modules), that rank, and the
    largest relative size of what the re-compression dropped (numerical noise for a withdraw).
    """
    version = split_lora_modules(lora_state(version_state), version_scale)
    adapters = [(split_lora_modules(lora_state(h.state), h.scale), c) for h, c in terms]
    merged: dict[str, LoraFactors] = {}
    dropped = 0.0
    for module, factors in version.items():
        pieces = [_float64(factors), *(_float64(a[module]) for a, _ in adapters)]
        weights = [ratio, *(c for _, c in adapters)]
        # stack and re-compress to the members' rank in float64: the Gram matrix of the core squares
        # its singular values, and float32 would blur the smallest kept ones into the dropped noise
        revised, error = task_arithmetic(pieces, weights, rank=rank)
        dtype = factors.A.dtype
        merged[module] = LoraFactors(A=revised.A.to(dtype), B=revised.B.to(dtype), scale=1.0)
        dropped = max(dropped, error)
    width = max(f.rank for f in merged.values())
    padded = {m: pad_rank(f, width) for m, f in merged.items()}
    return lora_modules_to_state(padded, like=version_state), width, dropped


def revise_heads(
    version_state: Mapping[str, Tensor],
    old: Recipe,
    new: Recipe,
    hospital: StoredHospital,
    replacement: StoredHospital | None,
    tasks: Mapping[int, str],
) -> dict[str, Tensor]:
    """The version's heads with `hospital`'s share of its task's head taken out (and `replacement`'s put in)."""
    heads = split_heads(non_lora_state(version_state))
    task = hospital.task
    holders = [h for h in old.hospitals if tasks[h] == task]
    total = math.fsum(head_weight(old, h) for h in holders)
    kept = [h for h in holders if h != hospital.id]
    ratio = 1.0 if old.method == FUSION or not kept else new.coefficients[kept[0]] / old.coefficients[kept[0]]
    gone = head_weight(old, hospital.id)
    added = head_weight(new, hospital.id) if replacement is not None else 0.0
    new_total = ratio * (total - gone) + added
    revised = {k: v for t, group in heads.items() if t != task for k, v in group.items()}
    if not kept and replacement is None:
        return revised  # no hospital of this task is left: its head goes with the withdrawn hospital
    own = split_heads(hospital.state)[task]
    incoming = split_heads(replacement.state)[task] if replacement is not None else {}
    for key, tensor in heads[task].items():
        mean = ratio * (total * tensor.double() - gone * own[key].double())
        if replacement is not None:
            mean = mean + added * incoming[key].double()
        revised[key] = (mean / new_total).to(tensor.dtype)
    return revised


def members_rank(ranks: Mapping[int, int], members: Sequence[int]) -> int:
    """The rank of a lossless merge of `members` before clipping by module shapes: Σ r_i."""
    return sum(int(ranks[h]) for h in members)
