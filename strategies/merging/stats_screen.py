"""Screening the statistics a data-aware merge reads (RegMean's Grams, Fisher merging's Fishers).

Checked against the hospital's own adapter, which the screen has already checked against the
server's layout: every statistic the method needs is there with the shape its tensor implies, and
finite; a Gram is symmetric, positive semi-definite (smallest eigenvalue >= -tol x its trace) and
bounded (mean diagonal, i.e. mean squared input, at most `max_gram_scale`); a Fisher is >= 0 and at
most `max_fisher`. Then, across hospitals, no Gram may dominate a solve: a hospital whose share of
a module's Σ trace(G_i) exceeds `max_gram_share` is left out (a head's share among its task's
hospitals), as the weight cap limits what a reported count can buy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fl_app.adapter_keys import LORA_A_SUFFIX, head_task_of, lora_module
from fl_app.merge_stats import FISHER_SUFFIX, GRAM_SUFFIX, fisher_key, gram_key

if TYPE_CHECKING:
    from strategies.merging.validation import ScreenSettings, Submission


def expected_stats(state: Mapping[str, Tensor], kind: str) -> dict[str, tuple[int, ...]]:
    """The statistics of `kind` an adapter implies, and their shapes."""
    if kind == "fisher":
        return {fisher_key(k): tuple(t.shape) for k, t in state.items()}
    expected = {}
    for key, tensor in state.items():
        module = lora_module(key)
        if module is not None and key.endswith(LORA_A_SUFFIX):
            d_in = tensor[0].numel()  # a kernel's patches: C·kh·kw
            expected[gram_key(module)] = (d_in, d_in)
        elif module is None and head_task_of(key) is not None and key.endswith(".weight"):
            d = tensor.shape[1] + 1  # features and a constant 1 for the bias
            expected[gram_key(key[: -len(".weight")])] = (d, d)
    return expected


def _gram_problem(gram: Tensor, s: ScreenSettings) -> str | None:
    g = gram.to(torch.float64)
    scale = float(g.abs().max())
    if float((g - g.T).abs().max()) > s.stats_tolerance * max(scale, 1e-30):
        return f"not symmetric: max |G - Gᵀ| = {float((g - g.T).abs().max()):.3g} (tolerance {s.stats_tolerance:g} x max |G|)"
    trace = float(torch.diagonal(g).sum())
    smallest = float(torch.linalg.eigvalsh((g + g.T) / 2).min())
    if trace < 0 or smallest < -s.stats_tolerance * max(trace, 0.0):
        return (
            f"not positive semi-definite: smallest eigenvalue {smallest:.4g}, trace {trace:.4g} "
            f"(a Gram of inputs has eigenvalues >= -{s.stats_tolerance:g} x trace)"
        )
    mean_square = trace / g.shape[0]
    if mean_square > s.max_gram_scale:
        return f"mean squared input {mean_square:.4g} is above strategy.screen.max_gram_scale={s.max_gram_scale:g}"
    return None


def _fisher_problem(fisher: Tensor, s: ScreenSettings) -> str | None:
    smallest, largest = float(fisher.min()), float(fisher.max())
    if smallest < -s.stats_tolerance * max(largest, 1e-30):
        return f"negative: a diagonal Fisher is a mean of squares, got a minimum {smallest:.4g}"
    if largest > s.max_fisher:
        return f"largest entry {largest:.4g} is above strategy.screen.max_fisher={s.max_fisher:g}"
    return None


def stats_problems(
    state: Mapping[str, Tensor], stats: Mapping[str, Tensor], kinds: Sequence[str], s: ScreenSettings
) -> list[tuple[str, str]]:
    """(key, problem) for each statistic of `kinds` that is missing, misshapen, non-finite or out of bounds."""
    problems = []
    for kind in kinds:
        suffix = GRAM_SUFFIX if kind == "gram" else FISHER_SUFFIX
        expected = expected_stats(state, kind)
        for key in sorted(k for k in stats if k.endswith(suffix) and k not in expected):
            problems.append((key, f"unexpected {kind} statistic: the hospital's adapter has no such tensor"))
        for key, shape in expected.items():
            if key not in stats:
                problems.append((key, f"missing: strategy.merge needs the {kind} statistics of every tensor"))
                continue
            tensor = stats[key]
            if tuple(tensor.shape) != shape:
                problems.append((key, f"shape {tuple(tensor.shape)}, the hospital's adapter implies {shape}"))
            elif not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
                problems.append(
                    (key, f"{int((~torch.isfinite(tensor)).sum())} of {tensor.numel()} values are NaN or Inf")
                )
            elif (problem := (_gram_problem if kind == "gram" else _fisher_problem)(tensor, s)) is not None:
                problems.append((key, problem))
    return problems


def gram_share_problems(submissions: Mapping[int, Submission], s: ScreenSettings) -> dict[int, list[tuple[str, str]]]:
    """Hospitals whose share of some Gram's Σ trace exceeds `max_gram_share` (LoRA: all; heads: per task)."""
    found: dict[int, list[tuple[str, str]]] = {i: [] for i in submissions}
    if s.max_gram_share is None:
        return found
    groups: dict[str, list[int]] = {}
    for i, sub in submissions.items():
        for key in sub.stats:
            if key.endswith(GRAM_SUFFIX):
                groups.setdefault(key, []).append(i)
    for key, holders in groups.items():
        if len(holders) < 2:  # one hospital's Gram is all of its solve
            continue
        traces = {i: max(float(torch.diagonal(submissions[i].stats[key].double()).sum()), 0.0) for i in holders}
        total = sum(traces.values())
        for i, trace in traces.items():
            share = trace / total if total > 0 else 0.0
            if share > s.max_gram_share:
                found[i].append(
                    (
                        key,
                        f"dominating Gram: {share:.1%} of the trace of {len(holders)} hospitals' Grams "
                        f"(limit strategy.screen.max_gram_share={s.max_gram_share:g})",
                    )
                )
    return found
