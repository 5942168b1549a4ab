"""Choosing a MedForge variant on validation: each variant's search run against the hospitals'
validation splits in this process (the federated search's objective, without Flower), beside the
data-free merges of the same adapters. Test numbers are computed only for the final report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fl_app.adapter_keys import is_lora_key
from fl_app.diagnosis.scoring import InProcessScorer, Score
from fl_app.remerge.stored import StoredHospital
from strategies.medforge.branches import task_heads
from strategies.medforge.search import SearchSettings, search_coefficients
from strategies.merging import hospital_weights, merge_adapters

PAPER = SearchSettings()  # box [-1.5, 1.5], start 0.5, L1 0.05 from zero, NGOpt, budget 40


@dataclass(frozen=True)
class Variant:
    name: str
    method: str  # fusion | mixture
    settings: SearchSettings


def default_variants(budget: int = 40, seed: int = 0) -> list[Variant]:
    """The geometries and starts the issue asks about, each searched on validation (CMA, batches of 8)."""
    base = SearchSettings(optimizer="CMA", budget=budget, seed=seed, source="federated")
    return [
        Variant(
            "fusion paper (box, start 0.5, L1 from 0)",
            "fusion",
            replace(PAPER, optimizer="CMA", budget=budget, seed=seed),
        ),
        Variant(
            "fusion box, data-free start, L1 from start", "fusion", replace(base, start="data_free", l1_from="start")
        ),
        Variant(
            "fusion convex, data-free start",
            "fusion",
            replace(base, geometry="convex", start="data_free", l1_from="start"),
        ),
        Variant(
            "fusion affine, data-free start",
            "fusion",
            replace(base, geometry="affine", start="data_free", l1_from="start"),
        ),
        Variant(
            "mixture convex, data-free start",
            "mixture",
            replace(base, geometry="convex", start="data_free", l1_from="start"),
        ),
    ]


def fused(
    hospitals: Sequence[StoredHospital],
    weights: Sequence[float],
    method: str = "task_arithmetic",
    searched: bool = True,
):
    """(state, rank, alpha) of a registered merge of the hospitals' adapters with `weights`. A searched
    Fusion keeps each task's mean head whatever the coefficients (as `FusionBranch` does); a
    data-free baseline (`searched=False`) averages heads by its weights (as `merge_adapters` does)."""
    result = merge_adapters(
        [h.state for h in hospitals],
        [h.scale for h in hospitals],
        list(weights),
        [h.task for h in hospitals],
        method=method,
    )
    state = (
        {k: v for k, v in result.state.items() if is_lora_key(k)} | task_heads(hospitals) if searched else result.state
    )
    return state, result.rank, result.lora_alpha


def score_row(name: str, val: Score, test: Score | None, extra: dict[str, Any]) -> dict[str, Any]:
    row = {"variant": name, "val_loss": val.loss, "val_auc": val.auc, "val_acc": val.acc, **extra}
    if test is not None:
        row |= {"test_auc": test.auc, "test_acc": test.acc}
    return row


def compare_variants(
    scorer: InProcessScorer,
    variants: Sequence[Variant],
    weighting: str = "uniform",
    baselines: Sequence[str] = ("task_arithmetic", "ties", "knots"),
    with_test: bool = True,
) -> list[dict[str, Any]]:
    """Each baseline and each variant: its validation loss/AUC/ACC (and test, for the report)."""
    hospitals = scorer.stored
    start = hospital_weights([h.id for h in hospitals], [h.n_train for h in hospitals], weighting)
    rows = []
    for method in baselines:
        state = fused(hospitals, start, method, searched=False)
        test = scorer.score(scorer.probabilities(*state, "test"), "test") if with_test else None
        rows.append(
            score_row(method, scorer.score(scorer.probabilities(*state, "val"), "val"), test, {"weights": start})
        )
    heads = task_heads(hospitals)
    components = (
        {split: scorer.own_probabilities(split, heads) for split in ("val", "test")}
        if any(v.method == "mixture" for v in variants)
        else {}
    )
    for variant in variants:
        settings = variant.settings
        if variant.method == "mixture":

            def batch(ws, split="val"):
                return [scorer.mixture_score(components[split], w, split).loss for w in ws]

        else:

            def batch(ws, split="val"):
                return [scorer.score(scorer.probabilities(*fused(hospitals, w), split), split).loss for w in ws]

        result = search_coefficients(
            None, len(hospitals), settings, start if settings.start == "data_free" else None, batch_loss=batch, batch=8
        )
        w = result.coefficients
        if variant.method == "mixture":
            val = scorer.mixture_score(components["val"], w, "val")
            test = scorer.mixture_score(components["test"], w, "test") if with_test else None
        else:
            state = fused(hospitals, w)
            val = scorer.score(scorer.probabilities(*state, "val"), "val")
            test = scorer.score(scorer.probabilities(*state, "test"), "test") if with_test else None
        rows.append(
            score_row(
                variant.name,
                val,
                test,
                {"weights": w, "objective": result.objective, "start_objective": result.start_objective},
            )
        )
    return rows


def best_by_validation(rows: Sequence[dict[str, Any]], key: str = "val_auc") -> dict[str, Any]:
    """The row with the highest validation AUC (ties: lower validation loss)."""
    return max(rows, key=lambda r: (round(r[key], 6), -r["val_loss"]))


def mean_rows(runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean over runs (seeds) of each variant's numbers, in the first run's order."""
    names = [r["variant"] for r in runs[0]]
    out = []
    for name in names:
        picked = [next(r for r in rows if r["variant"] == name) for rows in runs]
        numeric = [k for k, v in picked[0].items() if isinstance(v, float)]
        out.append(
            {"variant": name, "runs": len(picked), **{k: float(np.mean([p[k] for p in picked])) for k in numeric}}
        )
    return out
