"""Merge weights: one weight per hospital (uniform, by training examples, or given), and the
weighted average of tensors that are averaged rather than merged (classification heads)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

WeightScheme = Literal["uniform", "num_examples"]
WEIGHT_SCHEMES: tuple[str, ...] = get_args(WeightScheme)
Weighting = Literal["uniform", "num_examples", "explicit"]  # `strategy.weighting` and remerge's --weighting
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)


def hospital_weights(
    hospital_ids: Sequence[int],
    num_examples: Sequence[int],
    weighting: Weighting,
    explicit: Mapping[int | str, float] | None = None,
    max_share: float | None = None,
) -> list[float]:
    """The merge weight of each hospital, the one function the strategies and remerge call.

    `uniform` and `num_examples` sum to 1 (`merge_weights`); `explicit` takes `explicit[hospital id]`
    as given (`explicit_weights`, not renormalised: the coordinator's own choice). `max_share`
    (`strategy.robust.max_share`) caps what the hospitals' reported example counts can buy: no
    hospital above that share of the total (`cap_shares`); explicit weights are not capped.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r} is not valid; choose one of {list(WEIGHTINGS)}")
    if weighting != "explicit":
        weights = merge_weights(num_examples, weighting)
        return weights if max_share is None else cap_shares(weights, max_share)
    if not explicit:
        raise ValueError("weighting 'explicit' needs a weight per hospital id, e.g. strategy.weights={0: 0.5, 1: 0.5}")
    return explicit_weights(hospital_ids, explicit)


def merge_weights(num_examples: Sequence[int], scheme: WeightScheme) -> list[float]:
    """Per-hospital merge weights summing to 1: equal, or proportional to local training examples."""
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"unknown weight scheme {scheme!r}; choose one of {list(WEIGHT_SCHEMES)}")
    if len(num_examples) == 0:
        raise ValueError("merge_weights needs at least one hospital, got an empty list")
    for i, n in enumerate(num_examples):
        if n < 0:
            raise ValueError(f"hospital {i} reports num_examples={n}; counts must be >= 0")
    if scheme == "uniform":
        return [1.0 / len(num_examples)] * len(num_examples)
    total = sum(num_examples)
    if total <= 0:
        raise ValueError(
            f"scheme 'num_examples' needs a positive total, got {total} from {list(num_examples)}; "
            f"use scheme 'uniform' or report the hospitals' example counts"
        )
    return [n / total for n in num_examples]


def cap_shares(weights: Sequence[float], max_share: float) -> list[float]:
    """Weights summing as before, none above `max_share` of the sum: the excess goes to the others in proportion.

    Water-filling: cap the largest, hand the excess to the uncapped in proportion to their weights,
    repeat. When N x max_share < 1 no weights can satisfy it, and all become equal (the closest).
    """
    if not (math.isfinite(max_share) and 0 < max_share <= 1):
        raise ValueError(f"strategy.robust.max_share must be in (0, 1], got {max_share}")
    for i, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"cap_shares needs finite weights >= 0; weight {i} is {w}")
    total = math.fsum(weights)
    if total <= 0 or max_share * len(weights) <= 1:
        return [total / len(weights)] * len(weights) if weights else []
    capped = [False] * len(weights)
    result = list(weights)
    limit = max_share * total
    while True:
        over = [i for i, w in enumerate(result) if w > limit * (1 + 1e-12) and not capped[i]]
        if not over:
            return result
        for i in over:
            capped[i], result[i] = True, limit
        free = [i for i in range(len(result)) if not capped[i]]
        rest = total - limit * sum(capped)
        free_total = math.fsum(weights[i] for i in free)
        for i in free:
            result[i] = rest * (weights[i] / free_total if free_total > 0 else 1 / len(free))


def explicit_weights(hospital_ids: Sequence[int], weights: Mapping[int | str, float]) -> list[float]:
    """Per-hospital merge weights given by hospital id (config keys may be strings); not renormalised."""
    by_id = {str(k): v for k, v in weights.items()}
    missing = [h for h in hospital_ids if str(h) not in by_id]
    if missing:
        raise ValueError(
            f"explicit merge weights have no weight for hospital(s) {missing} (they name hospitals {sorted(by_id)}); "
            f"give every merged hospital a weight, e.g. strategy.weights={{0: 0.5, 1: 0.5}}"
        )
    chosen = [float(by_id[str(h)]) for h in hospital_ids]
    for h, w in zip(hospital_ids, chosen):
        if not math.isfinite(w):
            raise ValueError(f"explicit merge weight of hospital {h} must be finite, got {w}")
    return chosen


def head_weights(weights: Sequence[float]) -> list[float]:
    """Weights for averaging heads: the merge weights with negative ones set to 0.

    A negative merge weight subtracts a hospital's ΔW (task arithmetic's "negation"); a head is a
    classifier, not an update, and "minus a classifier" has no meaning, so a hospital with a weight
    <= 0 does not shape the merged head. A task whose every head has weight <= 0 has no merged head.
    """
    return [max(float(w), 0.0) for w in weights]


def average_tensors(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Weighted mean, weights renormalised to sum 1 (classification heads)."""
    if len(tensors) == 0:
        raise ValueError("average_tensors needs at least one tensor, got an empty list")
    if len(weights) != len(tensors):
        raise ValueError(f"got {len(weights)} weights for {len(tensors)} tensors; pass one weight per tensor")
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape != tensors[0].shape:
            raise ValueError(f"tensor {i} has shape {tuple(t.shape)} but tensor 0 has {tuple(tensors[0].shape)}")
    for i, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight {i} must be finite and >= 0, got {w}")
    total = math.fsum(weights)
    if total <= 0:
        raise ValueError(f"weights must have a positive sum to average, got {list(weights)}")
    mean = sum((w / total) * t.to(torch.float64) for t, w in zip(tensors, weights))
    return mean.to(tensors[0].dtype)
