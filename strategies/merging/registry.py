"""The merge methods by name: each one's function, paper, exactness and parameters.

Adding a method = one new module with a `ModuleMerge` function + one entry in `_METHODS` below;
its parameters and their defaults are read from the function's keyword-only parameters. Related methods are one function configured by
`bound` parameters (TIES, DARE and magnitude pruning are `sparse_task_arithmetic` pipelines).
PEFT's `add_weighted_adapter` names (linear, cat, svd, ties_svd, ...) are aliases of the same entries
with PEFT's defaults, so an alias merges as PEFT does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from strategies.merging.fedit import fedit
from strategies.merging.fisher import fisher, fisher_heads
from strategies.merging.knots import knots
from strategies.merging.lowrank import ModuleMerge, task_arithmetic
from strategies.merging.regmean import regmean, regmean_heads
from strategies.merging.robust import coordinate_median, trimmed_mean
from strategies.merging.sce import sce
from strategies.merging.sparsify import PIPELINES, sparse_task_arithmetic
from strategies.merging.stock import model_stock


def signature_params(
    fn: ModuleMerge, bound: Mapping[str, Any], defaults: Mapping[str, Any], unused: frozenset[str]
) -> dict[str, Any]:
    """The settable parameters of `fn` and their defaults, read from its keyword-only parameters.

    `bound` and `unused` ones are left out; `defaults` supplies a default the signature leaves to
    the caller (a pipeline's density). A default therefore lives in one place: the function, or
    the table that configures it.
    """
    params = {}
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or parameter.name in bound or parameter.name in unused:
            continue
        default = defaults.get(parameter.name, parameter.default)
        if default is inspect.Parameter.empty:
            raise TypeError(
                f"merge function {fn.__name__} has no default for {parameter.name!r}; give one in its signature or in `defaults`"
            )
        params[parameter.name] = default
    return params


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: its function over one module's adapters, its parameters, its paper."""

    name: str
    fn: ModuleMerge
    paper: str
    exact: bool  # at rank None the merged ΔW is exactly the ΔW the method defines (fedit: not the weighted sum)
    description: str
    bound: Mapping[str, Any] = field(default_factory=dict)  # fixed parameters that make `fn` this method
    defaults: Mapping[str, Any] = field(default_factory=dict)  # defaults the signature leaves to the caller
    unused: frozenset[str] = frozenset()  # keyword parameters of `fn` this method ignores
    same_rank: bool = False  # it needs every adapter at one rank (it averages the factors): others are left out
    # how far above the triangle bound |scale|·max(1, max|w|)·Σ‖ΔW_i‖ an honest merge can reach (a refused
    # merge is one beyond max_merged_ratio x this): RegMean's matrix weights G_i (Σ G)^-1 are not convex
    reach: float = 1.0
    # data-aware methods: the hospitals' statistics they read (`fl_app.merge_stats` kind), and how they
    # merge one task's heads with them (`fn(heads, stats, weights, **params)`); None: heads are averaged
    stats: str | None = None
    head_fn: Callable[..., dict[str, Any]] | None = None
    # settable parameters and their defaults: read from `fn`'s signature
    params: Mapping[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", signature_params(self.fn, self.bound, self.defaults, self.unused))

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments for `fn`: the defaults overridden by `params`, plus the bound ones."""
        given = dict(params or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            declared = f"its parameters are {sorted(self.params)}" if self.params else "it takes no parameters"
            raise ValueError(f"merge method {self.name!r} has no parameter {', '.join(map(repr, unknown))}; {declared}")
        return {**self.params, **given, **self.bound}


SIGN_PARAMS = frozenset({"majority_sign_method", "normalize"})


def _sparse(name: str, description: str) -> MergeMethod:
    """A `sparse_task_arithmetic` pipeline: its density default, sign election and seed where it uses them."""
    pipeline = PIPELINES[name]
    unused = (
        (frozenset() if pipeline.consensus == "sign" else SIGN_PARAMS)
        | (frozenset() if pipeline.sparsify in ("random", "magprune") else {"seed"})
        | (frozenset() if pipeline.sparsify == "breadcrumbs" else {"gamma"})
        | (frozenset() if pipeline.sparsify == "magprune" else {"epsilon"})
    )
    return MergeMethod(
        name,
        sparse_task_arithmetic,
        pipeline.paper,
        True,
        description,
        bound={"pipeline": name},
        defaults={"density": pipeline.density},
        unused=unused,
    )


_METHODS = [
    MergeMethod(
        name="fedit",
        fn=fedit,
        paper="https://arxiv.org/abs/2305.05644",
        exact=False,
        description="FedIT: weighted average of A and B separately. INEXACT: the product of the averages "
        "is not the average ΔW (cross terms B_i A_j). One rank for all hospitals.",
        same_rank=True,
    ),
    MergeMethod(
        name="task_arithmetic",
        fn=task_arithmetic,
        paper="https://arxiv.org/abs/2212.04089",
        exact=True,
        description="Weighted sum of the hospitals' ΔW = s·B·A from the factors; form 'svd' re-factors it "
        "by truncated SVD (QR + small SVD), form 'cat' concatenates the factors (rank Σ r_i).",
    ),
    _sparse(
        "ties",
        "TIES on ΔW: trim each ΔW_i to its top `density` entries, elect sign, disjoint mean; SVD re-factored.",
    ),
    _sparse(
        "dare_linear",
        "DARE on ΔW: drop entries with probability 1 - density (seeded), rescale by 1/density, weighted sum.",
    ),
    _sparse(
        "dare_ties",
        "DARE drop and rescale, then TIES sign election and disjoint mean, on ΔW; SVD re-factored.",
    ),
    _sparse(
        "magnitude_prune",
        "Trim each ΔW_i to its top `density` entries by magnitude, weighted sum; SVD re-factored.",
    ),
    MergeMethod(
        name="regmean",
        fn=regmean,
        paper="https://arxiv.org/abs/2212.09849",
        exact=True,
        description="RegMean on ΔW: (Σ w_i ΔW_i G_i)(Σ w_i G_i)^-1 with each hospital's input Gram G_i (off-diagonal "
        "scaled by alpha), exact in factored form (rank Σ r_i); heads of a task by RegMean on the penultimate "
        "features. Needs strategy.stats=[gram].",
        stats="gram",
        head_fn=regmean_heads,
        reach=10.0,  # measured up to 4.9x on real multi-center adapters (1.6x multi-task)
    ),
    MergeMethod(
        name="fisher",
        fn=fisher,
        paper="https://arxiv.org/abs/2111.09832",
        exact=False,
        description="Fisher merging of the released parameters: A, B and heads each averaged elementwise with the "
        "hospitals' diagonal Fishers as weights. INEXACT for ΔW (cross terms B_i A_j, as FedIT). One rank for all "
        "hospitals. Needs strategy.stats=[fisher].",
        stats="fisher",
        head_fn=fisher_heads,
        same_rank=True,
    ),
    _sparse(
        "breadcrumbs",
        "Model Breadcrumbs on ΔW: drop each ΔW_i's top `gamma` entries (outliers) and its smallest, keeping "
        "`density`, weighted sum; SVD re-factored (dense ΔW, as mergekit on full weights).",
    ),
    _sparse(
        "breadcrumbs_ties",
        "Model Breadcrumbs' mask, then TIES sign election and disjoint mean, on ΔW; SVD re-factored.",
    ),
    _sparse(
        "della",
        "DELLA on ΔW: MAGPRUNE (keep probability density ± epsilon by magnitude rank within each row, seeded, "
        "rescaled), TIES sign election, disjoint mean; SVD re-factored.",
    ),
    _sparse("della_linear", "DELLA's MAGPRUNE on ΔW, then a weighted sum (no sign election); SVD re-factored."),
    MergeMethod(
        name="model_stock",
        fn=model_stock,
        paper="https://arxiv.org/abs/2403.19522",
        exact=True,
        description="Model Stock: t · mean ΔW_i with t = N cos / (1 + (N-1) cos), cos the mean pairwise cosine of "
        "the ΔW_i; from the factors (exact; factor-space inner products), mean by the merge weights.",
    ),
    MergeMethod(
        name="sce",
        fn=sce,
        paper="https://arxiv.org/abs/2408.07990",
        exact=True,
        description="SCE (FuseChat): select the `select_topk` entries of largest variance across the ΔW_i, weigh "
        "each hospital by its selected ΔW's mean square, erase minority signs, weighted mean; times Σ w "
        "(hospital weights from the updates, not the merge weights); dense ΔW, SVD re-factored.",
    ),
    MergeMethod(
        name="median",
        fn=coordinate_median,
        paper="https://arxiv.org/abs/1803.01498",
        exact=True,
        description="Byzantine-robust: coordinate-wise median of the ΔW_i (unweighted, times Σ w); SVD re-factored. "
        "Robust while fewer than half the hospitals are malicious.",
    ),
    MergeMethod(
        name="trimmed_mean",
        fn=trimmed_mean,
        paper="https://arxiv.org/abs/1803.01498",
        exact=True,
        description="Byzantine-robust: per coordinate, drop the `trim` fraction of largest and smallest ΔW_i entries, "
        "average the rest (unweighted, times Σ w); SVD re-factored.",
    ),
    MergeMethod(
        name="knots",
        fn=knots,
        paper="https://arxiv.org/abs/2410.19735",
        exact=True,
        description="KnOTS: align the ΔW_i in the SVD basis of [ΔW_1 ... ΔW_N], merge the coefficients with "
        "`inner` (ties, dare_ties, linear, ...), re-factor; from the factors.",
    ),
]
MERGE_METHODS: dict[str, MergeMethod] = {m.name: m for m in _METHODS}

# PEFT add_weighted_adapter's names for the same merges, with what differs (PEFT's own `ties`, `dare_*`
# and `magnitude_prune` without `_svd` work on A and B separately; here those names are the ΔW methods).
PEFT_NAMES: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    # alias: (target, bound parameters, defaults that differ from the target's, note)
    "linear": (
        "fedit",
        {},
        {},
        "PEFT puts sqrt(|w|) on each factor and the sign on A, so PEFT linear(w) = fedit(sign(w)·sqrt(|w|)).",
    ),
    "cat": ("task_arithmetic", {"form": "cat"}, {}, ""),
    "svd": (
        "task_arithmetic",
        {"form": "svd"},
        {},
        "merge_rank None is lossless here; PEFT's default svd_rank is max r_i.",
    ),
    "ties_svd": ("ties", {}, {"normalize": "count"}, "Like PEFT, the disjoint mean divides by the count."),
    "dare_linear_svd": ("dare_linear", {}, {}, ""),
    "dare_ties_svd": ("dare_ties", {}, {"normalize": "count"}, "Like PEFT, the disjoint mean divides by the count."),
    "magnitude_prune_svd": ("magnitude_prune", {}, {}, ""),
}


def _peft_alias(
    alias: str, target: str, bound: Mapping[str, Any], defaults: Mapping[str, Any], note: str
) -> MergeMethod:
    """PEFT's name for a registered method, with PEFT's defaults where they differ (so the alias merges as PEFT does)."""
    method = MERGE_METHODS[target]
    using = ", ".join(f"{k}={v!r}" for k, v in {**bound, **defaults}.items())
    return replace(
        method,
        name=alias,
        description=" ".join(
            filter(
                None, [f"PEFT's {alias!r}: {target}" + (f" with {using}." if using else "."), note, method.description]
            )
        ),
        bound={**method.bound, **bound},
        defaults={**method.defaults, **defaults},
    )


MERGE_METHODS |= {alias: _peft_alias(alias, *spec) for alias, spec in PEFT_NAMES.items()}


def get_merge_method(name: str) -> MergeMethod:
    """The registered method called `name`."""
    if name not in MERGE_METHODS:
        raise ValueError(f"unknown merge method {name!r}; choose one of {sorted(MERGE_METHODS)}")
    return MERGE_METHODS[name]
