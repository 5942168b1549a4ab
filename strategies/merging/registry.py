"""The merge methods by name: each one's function, paper, exactness and parameters.

Adding a method = one new module with a `ModuleMerge` function + one entry in `_METHODS` below,
declaring its parameters with their defaults. Related methods are one function configured by
`bound` parameters (TIES, DARE and magnitude pruning are `sparse_task_arithmetic` pipelines).
PEFT's `add_weighted_adapter` names (linear, cat, svd, ties_svd, ...) are aliases of the same entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from strategies.merging.fedit import fedit
from strategies.merging.knots import knots
from strategies.merging.lowrank import ModuleMerge, task_arithmetic
from strategies.merging.sparsify import PIPELINES, sparse_task_arithmetic


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: its function over one module's adapters, its parameters, its paper."""

    name: str
    fn: ModuleMerge
    paper: str
    exact: bool  # at rank None the merged ΔW is exactly the ΔW the method defines (fedit: not the weighted sum)
    description: str
    params: Mapping[str, Any] = field(default_factory=dict)  # settable parameters and their defaults
    bound: Mapping[str, Any] = field(default_factory=dict)  # fixed parameters that make `fn` this method

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments for `fn`: the defaults overridden by `params`, plus the bound ones."""
        given = dict(params or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            declared = f"its parameters are {sorted(self.params)}" if self.params else "it takes no parameters"
            raise ValueError(f"merge method {self.name!r} has no parameter {', '.join(map(repr, unknown))}; {declared}")
        return {**self.params, **given, **self.bound}


SIGN_PARAMS = {"majority_sign_method": "total", "normalize": "weights"}


def _sparse(name: str, density: float, description: str, *, sign: bool = False, seed: bool = False) -> MergeMethod:
    """A `sparse_task_arithmetic` pipeline: density always, sign election and seed where it uses them."""
    params: dict[str, Any] = {"density": density}
    params |= SIGN_PARAMS if sign else {}
    params |= {"seed": 0} if seed else {}
    return MergeMethod(name, sparse_task_arithmetic, PIPELINES[name].paper, True, description, params, {"pipeline": name})


_METHODS = [
    MergeMethod(
        name="fedit",
        fn=fedit,
        paper="https://arxiv.org/abs/2305.05644",
        exact=False,
        description="FedIT: weighted average of A and B separately. INEXACT: the product of the averages "
        "is not the average ΔW (cross terms B_i A_j). One rank for all hospitals.",
    ),
    MergeMethod(
        name="task_arithmetic",
        fn=task_arithmetic,
        paper="https://arxiv.org/abs/2212.04089",
        exact=True,
        description="Weighted sum of the hospitals' ΔW = s·B·A from the factors; form 'svd' re-factors it "
        "by truncated SVD (QR + small SVD), form 'cat' concatenates the factors (rank Σ r_i).",
        params={"form": "svd"},
    ),
    # densities: TIES keeps the top 20% (the paper's k = 20); DARE keeps half
    _sparse(
        "ties",
        0.2,
        "TIES on ΔW: trim each ΔW_i to its top `density` entries, elect sign, disjoint mean; SVD re-factored.",
        sign=True,
    ),
    _sparse(
        "dare_linear",
        0.5,
        "DARE on ΔW: drop entries with probability 1 - density (seeded), rescale by 1/density, weighted sum.",
        seed=True,
    ),
    _sparse(
        "dare_ties",
        0.5,
        "DARE drop and rescale, then TIES sign election and disjoint mean, on ΔW; SVD re-factored.",
        sign=True,
        seed=True,
    ),
    _sparse(
        "magnitude_prune",
        0.2,
        "Trim each ΔW_i to its top `density` entries by magnitude, weighted sum; SVD re-factored.",
    ),
    MergeMethod(
        name="knots",
        fn=knots,
        paper="https://arxiv.org/abs/2410.19735",
        exact=True,
        description="KnOTS: align the ΔW_i in the SVD basis of [ΔW_1 ... ΔW_N], merge the coefficients with "
        "`inner` (ties, dare_ties, linear, ...), re-factor; from the factors.",
        params={"inner": "ties", "density": 0.2, "seed": 0, **SIGN_PARAMS},
    ),
]
MERGE_METHODS: dict[str, MergeMethod] = {m.name: m for m in _METHODS}

# PEFT add_weighted_adapter's names for the same merges, with what differs (PEFT's own `ties`, `dare_*`
# and `magnitude_prune` without `_svd` work on A and B separately; here those names are the ΔW methods).
PEFT_NAMES: dict[str, tuple[str, dict[str, Any], str]] = {
    "linear": ("fedit", {}, "PEFT puts sqrt(w) on each factor, so PEFT linear(w) = fedit(sqrt(w))."),
    "cat": ("task_arithmetic", {"form": "cat"}, ""),
    "svd": ("task_arithmetic", {"form": "svd"}, "merge_rank None is lossless here; PEFT's default svd_rank is max r_i."),
    "ties_svd": ("ties", {}, "PEFT's disjoint mean divides by the count: normalize='count'."),
    "dare_linear_svd": ("dare_linear", {}, ""),
    "dare_ties_svd": ("dare_ties", {}, "PEFT's disjoint mean divides by the count: normalize='count'."),
    "magnitude_prune_svd": ("magnitude_prune", {}, ""),
}


def _peft_alias(alias: str, target: str, bound: Mapping[str, Any], note: str) -> MergeMethod:
    method = MERGE_METHODS[target]
    using = f"{target} with {dict(bound)}" if bound else target
    return replace(
        method,
        name=alias,
        description=" ".join(filter(None, [f"PEFT's {alias!r}: {using}.", note, method.description])),
        params={k: v for k, v in method.params.items() if k not in bound},
        bound={**method.bound, **bound},
    )


MERGE_METHODS |= {alias: _peft_alias(alias, *spec) for alias, spec in PEFT_NAMES.items()}


def get_merge_method(name: str) -> MergeMethod:
    """The registered method called `name`."""
    if name not in MERGE_METHODS:
        raise ValueError(f"unknown merge method {name!r}; choose one of {sorted(MERGE_METHODS)}")
    return MERGE_METHODS[name]
