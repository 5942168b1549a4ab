"""TIES, DARE, magnitude pruning, Model Breadcrumbs and DELLA as one pipeline: sparsify -> weight -> elect sign -> disjoint merge -> scale.

Space: the explicit ΔW_i = s_i · B_i A_i of every adapter, because trimming and sign election act
element-wise on it (PEFT's `*_svd` combinations do the same); the merged ΔW is re-factored to LoRA
by SVD at the end, so adapters of different ranks merge. `combine` works on any stack of
per-adapter tensors: KnOTS reuses it on its aligned coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from strategies.merging.lowrank import (
    LoraFactors,
    adapters_dtype,
    check_adapters,
    check_rank,
    check_scale,
    refactor_dense,
)

Sparsify = Literal["none", "magnitude", "random", "breadcrumbs", "magprune"]
Consensus = Literal["none", "sign"]
MajoritySignMethod = Literal["total", "frequency"]
Normalize = Literal["weights", "count"]
PipelineName = Literal[
    "linear",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
]
MAJORITY_SIGN_METHODS: tuple[str, ...] = get_args(MajoritySignMethod)
NORMALIZE_CHOICES: tuple[str, ...] = get_args(Normalize)


@dataclass(frozen=True)
class Pipeline:
    """How a named method configures the shared pipeline, and the paper it follows."""

    sparsify: Sparsify
    consensus: Consensus
    paper: str
    density: float = 1.0  # the method's default fraction of entries kept


TIES_PAPER = "https://arxiv.org/abs/2306.01708"  # Yadav et al. 2023, TIES-Merging
DARE_PAPER = "https://arxiv.org/abs/2311.03099"  # Yu et al. 2024, Language Models are Super Mario (DARE)
BREADCRUMBS_PAPER = "https://arxiv.org/abs/2312.06795"  # Davari & Belilovsky 2024, Model Breadcrumbs
DELLA_PAPER = "https://arxiv.org/abs/2406.11617"  # Deep et al. 2024, DELLA-Merging (MAGPRUNE)

# densities: TIES keeps the top 20% (the paper's k = 20); DARE keeps half
PIPELINES: dict[str, Pipeline] = {
    "linear": Pipeline("none", "none", "https://arxiv.org/abs/2212.04089"),
    "ties": Pipeline("magnitude", "sign", TIES_PAPER, density=0.2),
    "dare_linear": Pipeline("random", "none", DARE_PAPER, density=0.5),
    "dare_ties": Pipeline("random", "sign", DARE_PAPER, density=0.5),
    "magnitude_prune": Pipeline("magnitude", "none", TIES_PAPER, density=0.2),  # TIES' trim step alone (PEFT's name)
    # mergekit's defaults: breadcrumbs keeps 90% after dropping the top 1% (gamma); DELLA keeps 70% on average
    "breadcrumbs": Pipeline("breadcrumbs", "none", BREADCRUMBS_PAPER, density=0.9),
    "breadcrumbs_ties": Pipeline("breadcrumbs", "sign", BREADCRUMBS_PAPER, density=0.9),
    "della": Pipeline("magprune", "sign", DELLA_PAPER, density=0.7),
    "della_linear": Pipeline("magprune", "none", DELLA_PAPER, density=0.7),
}


def check_pipeline(
    pipeline: str, density: float, majority_sign_method: str, normalize: str, gamma: float = 0.01, epsilon: float = 0.1
) -> Pipeline:
    """The named pipeline, after checking its parameters once."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {sorted(PIPELINES)}")
    chosen = PIPELINES[pipeline]
    if chosen.sparsify != "none" and not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
        raise ValueError(f"density is the fraction of entries kept and must be in (0, 1], got {density!r}")
    if chosen.sparsify == "breadcrumbs" and not (0.0 <= gamma < 1.0):
        raise ValueError(f"gamma is the fraction of largest entries dropped and must be in [0, 1), got {gamma!r}")
    if chosen.sparsify == "magprune" and density < 1.0 and not (0.0 <= epsilon < density and density + epsilon <= 1.0):
        raise ValueError(
            f"epsilon spreads the keep probability over density ± epsilon, which must stay in (0, 1]: got "
            f"density={density!r}, epsilon={epsilon!r}"
        )
    if majority_sign_method not in MAJORITY_SIGN_METHODS:
        raise ValueError(
            f"unknown majority_sign_method {majority_sign_method!r}; choose one of {list(MAJORITY_SIGN_METHODS)}"
        )
    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {list(NORMALIZE_CHOICES)}")
    return chosen


def as_generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU generator: the one given, or a fresh one seeded with `seed`."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int or a torch.Generator, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def magnitude_prune(tensors: Tensor, density: float) -> Tensor:
    """TIES 'trim': keep each adapter's entries whose magnitude reaches its k-th largest, k = int(density · numel).

    tensors: one adapter per row of dim 0. Entries tied with the k-th largest magnitude are all kept,
    so the result does not depend on how topk orders ties (PEFT's magnitude_based_pruning keeps
    exactly k, picking among ties; float32 ΔWs do have ties, so the two can differ by a few entries).
    """
    flat = tensors.reshape(tensors.shape[0], -1)
    n = flat.shape[1]
    k = int(density * n)  # as PEFT
    if k >= n:
        return tensors
    if k == 0:
        return torch.zeros_like(tensors)
    magnitude = flat.abs()
    threshold = magnitude.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    return torch.where(magnitude >= threshold, flat, 0.0).reshape(tensors.shape)


def random_prune(tensors: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE: keep each entry with probability `density` and rescale the kept ones by 1 / density.

    Draws PEFT's mask: PEFT's random_pruning calls torch.bernoulli on a tensor of `density` in the
    tensors' dtype, adapter after adapter, and on CPU that keeps exactly the entries whose uniform
    draw u < density; torch.rand gives the same draws about three times faster. So the same seed
    gives PEFT's mask (tests check both).
    """
    if density >= 1.0:
        return tensors  # nothing dropped and no draw, as in PEFT
    keep = torch.rand(tensors.shape, generator=generator, dtype=tensors.dtype) < density
    return torch.where(keep, tensors, 0.0).div_(density)


def magnitude_outliers(tensors: Tensor, density: float, gamma: float) -> Tensor:
    """Model Breadcrumbs' mask: drop each adapter's top `gamma` fraction by magnitude (outliers) and its
    smallest entries, keeping `density` of them (mergekit's `magnitude_outliers`: counts int(density · n)
    and int(gamma · n); when they overlap, fewer outliers are dropped). Ties broken by a stable sort."""
    flat = tensors.reshape(tensors.shape[0], -1)
    n = flat.shape[1]
    keep, top = int(density * n), int(gamma * n)
    bottom = n - keep - top
    if bottom < 0:
        top, bottom = top + bottom, 0
    order = flat.abs().argsort(dim=1, stable=True)  # ascending magnitude
    mask = torch.zeros_like(flat, dtype=torch.bool)
    kept = order[:, bottom : n - top]
    mask.scatter_(1, kept, True)
    return torch.where(mask, flat, 0.0).reshape(tensors.shape)


def magprune(tensors: Tensor, density: float, epsilon: float, generator: torch.Generator) -> Tensor:
    """DELLA's MAGPRUNE: within each row of each adapter's ΔW, keep an entry with probability
    density - epsilon + 2 epsilon · rank / (n - 1) (rank 0: the smallest magnitude), rescaled by 1 / that
    probability, so larger entries are dropped less and the expectation is unchanged."""
    if density >= 1.0:
        return tensors
    n = tensors.shape[-1]
    ranks = tensors.abs().argsort(dim=-1, stable=True).argsort(dim=-1).to(tensors.dtype)
    spread = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    keep_probability = density - epsilon + 2 * epsilon * spread
    keep = torch.rand(tensors.shape, generator=generator, dtype=tensors.dtype) < keep_probability
    return torch.where(keep, tensors / keep_probability, 0.0)


def majority_sign_agreement(tensors: Tensor, method: MajoritySignMethod = "total") -> Tensor:
    """TIES 'elect sign': where each adapter's entry has the elected sign (zeros never agree).

    total: the sign of the summed entries; frequency: the sign most adapters have. Ties elect +.
    Elected on the unweighted (trimmed) entries, as in the TIES paper and PEFT.
    """
    strength = tensors.sum(dim=0) if method == "total" else tensors.sign().sum(dim=0)
    elected = torch.where(strength >= 0, 1.0, -1.0).to(tensors.dtype)
    return tensors * elected > 0


def disjoint_merge(tensors: Tensor, weights: Tensor, agree: Tensor, normalize: Normalize = "weights") -> Tensor:
    """TIES 'disjoint merge': average, per entry, only the adapters that agree with the elected sign.

    normalize "weights": Σ_agree w_i x_i / Σ_agree |w_i| (mergekit; the TIES paper's mean for equal
    weights, independent of the weights' overall scale). "count": Σ_agree w_i x_i / #agree (PEFT).
    """
    total = torch.tensordot(weights, torch.where(agree, tensors, 0.0), dims=1)
    if normalize == "count":
        denominator = agree.sum(dim=0, dtype=tensors.dtype).clamp(min=1)
    else:
        denominator = torch.tensordot(weights.abs(), agree.to(tensors.dtype), dims=1)
        denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return total / denominator


def combine(
    tensors: Tensor,
    weights: Sequence[float],
    *,
    pipeline: PipelineName,
    density: float = 1.0,
    majority_sign_method: MajoritySignMethod = "total",
    normalize: Normalize = "weights",
    seed: int | torch.Generator = 0,
    gamma: float = 0.01,
    epsilon: float = 0.1,
) -> Tensor:
    """Merge a stack of per-adapter tensors (adapter on dim 0) with a named pipeline."""
    chosen = check_pipeline(pipeline, density, majority_sign_method, normalize, gamma, epsilon)
    if len(weights) != tensors.shape[0]:
        raise ValueError(f"got {len(weights)} weights for {tensors.shape[0]} tensors; pass one weight per adapter")
    # sparsify
    if chosen.sparsify == "magnitude":
        tensors = magnitude_prune(tensors, density)
    elif chosen.sparsify == "random":
        tensors = random_prune(tensors, density, as_generator(seed))
    elif chosen.sparsify == "breadcrumbs":
        tensors = magnitude_outliers(tensors, density, gamma)
    elif chosen.sparsify == "magprune":
        tensors = magprune(tensors, density, epsilon, as_generator(seed))
    # weight
    w = torch.tensor(list(weights), dtype=tensors.dtype)
    if chosen.consensus == "none":
        return torch.tensordot(w, tensors, dims=1)
    # elect sign
    agree = majority_sign_agreement(tensors, majority_sign_method)
    # disjoint merge
    return disjoint_merge(tensors, w, agree, normalize)


def sparse_task_arithmetic(
    adapters: Sequence[LoraFactors],
    weights: Sequence[float],
    scale: float = 1.0,
    rank: int | None = None,
    *,
    pipeline: PipelineName,
    density: float,
    majority_sign_method: MajoritySignMethod = "total",
    normalize: Normalize = "weights",
    seed: int | torch.Generator = 0,
    gamma: float = 0.01,
    epsilon: float = 0.1,
) -> tuple[LoraFactors, float]:
    """Generalised task arithmetic on the explicit ΔW_i: `pipeline` names TIES, DARE or magnitude pruning.

    TIES: Yadav et al. 2023, https://arxiv.org/abs/2306.01708 (trim to `density`, elect sign,
    disjoint mean). DARE: Yu et al. 2024, https://arxiv.org/abs/2311.03099 (drop with probability
    1 - density, rescale by 1 / density; with TIES' sign election for dare_ties). Model Breadcrumbs:
    https://arxiv.org/abs/2312.06795 (drop the top `gamma` and the smallest, keep `density`). DELLA:
    https://arxiv.org/abs/2406.11617 (MAGPRUNE: keep probability density ± epsilon by magnitude rank
    per row, rescaled; with TIES' sign election). All on the dense ΔW_i. ΔW = scale · merge,
    re-factored by SVD: rank None keeps min(d_out, d_in) (lossless: a sparsified ΔW is full rank, so
    set a rank, PEFT's default is max r_i); an int truncates, and the error returned is the
    truncation's relative Frobenius error against the merged ΔW. ΔW is formed in the adapters'
    dtype (at least float32), like PEFT's get_delta_weight, so DARE masks match PEFT's for a seed.
    """
    check_adapters(adapters, weights)
    check_rank(rank)
    check_scale(scale)
    check_pipeline(pipeline, density, majority_sign_method, normalize, gamma, epsilon)
    dtype = adapters_dtype(adapters)
    work = torch.promote_types(dtype, torch.float32)
    # delta: ΔW_i = (B_i A_i) · s_i, in PEFT's order of operations
    deltas = torch.stack([(a.B.to(work) @ a.A.to(work)) * a.scale for a in adapters])
    # sparsify, weight, elect sign, disjoint merge
    merged = combine(
        deltas,
        weights,
        pipeline=pipeline,
        density=density,
        majority_sign_method=majority_sign_method,
        normalize=normalize,
        seed=seed,
        gamma=gamma,
        epsilon=epsilon,
    )
    # scale
    merged = scale * merged
    # re-factor
    B, A, error = refactor_dense(merged, rank)
    return LoraFactors(A=A.to(dtype), B=B.to(dtype), scale=1.0), error
