"""Series for the plots, pure: accuracy against bytes sent, per FedAvg round and per progressive version."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fl_app.report.collect import Run
from fl_app.report.table import Comparison, Stat, cumulative_bytes, fedavg_label


@dataclass(frozen=True)
class CurvePoint:
    step: str  # "1", "2", ... (FedAvg round) or a version name ("v1", "v2", ...)
    total_bytes: Stat  # cumulative upload + download (training phase) up to this step
    mean_acc: Stat


@dataclass(frozen=True)
class Curve:
    label: str
    points: list[CurvePoint]


def _total_through(communication: Mapping[str, Any], through_round: int | None) -> int:
    up, down = cumulative_bytes(communication, through_round)
    return up + down


def _curves(samples: Mapping[str, Mapping[str, list[tuple[float | None, float | None]]]]) -> list[Curve]:
    """{label: {step: [(bytes, acc) per run]}} -> curves of mean ± std over runs."""
    return [
        Curve(
            label,
            [
                CurvePoint(step, Stat.of(b for b, _ in pairs), Stat.of(a for _, a in pairs))
                for step, pairs in steps.items()
            ],
        )
        for label, steps in samples.items()
    ]


def fedavg_curves(runs: Sequence[Run], comparison: Comparison) -> list[Curve]:
    """One curve per FedAvg row: mean accuracy after round k against bytes sent in rounds 1..k."""
    samples: dict[str, dict[str, list[tuple[float | None, float | None]]]] = {}
    for run, settings in zip(runs, comparison.settings):
        rounds = sorted(
            (v for v in run.results.get("versions", []) if v.get("kind") == "fedavg"),
            key=lambda v: int(v.get("round", 0)),
        )
        if not rounds:
            continue
        label = fedavg_label(int(rounds[-1].get("round", len(rounds))), settings)
        communication = run.results.get("communication") or {}
        for version in rounds:
            k = int(version.get("round", 0))
            samples.setdefault(label, {}).setdefault(str(k), []).append(
                (_total_through(communication, k), version.get("mean_acc"))
            )
    return _curves(samples)


def progressive_curves(runs: Sequence[Run], comparison: Comparison) -> list[Curve]:
    """One curve per progressive row: mean accuracy of each version (v1, v2, ...) in order; empty when none."""
    samples: dict[str, dict[str, list[tuple[float | None, float | None]]]] = {}
    for run, settings in zip(runs, comparison.settings):
        communication = run.results.get("communication") or {}
        for version in (v for v in run.results.get("versions", []) if v.get("kind") == "progressive"):
            method = version.get("method") or run.results.get("merge") or ""
            label = f"progressive {method}".strip() + (f" [{settings}]" if settings else "")
            through = int(version["round"]) if "round" in version else None
            # a MedForge version's mean_acc is over the tasks merged so far; the step names the x position
            step = f"v{version['step']}" if "step" in version else str(version["name"])
            samples.setdefault(label, {}).setdefault(step, []).append(
                (_total_through(communication, through), version.get("mean_acc"))
            )
    return _curves(samples)


def one_shot_points(comparison: Comparison) -> list[tuple[str, Stat, Stat]]:
    """(label, total bytes, mean accuracy) of every merged row: one point each on the bytes plot."""
    return [
        (row.label, row.stats["total_bytes"], row.stats["mean/acc"]) for row in comparison.rows if row.kind == "merged"
    ]


@dataclass(frozen=True)
class PrivacyPoint:
    epsilon: float  # the hospitals' target ε; math.inf for the non-private runs
    mean_auc: Stat
    mean_acc: Stat


def _without_privacy_tag(label: str) -> str:
    """`task_arithmetic [ε=8, lora.r=4]` -> `task_arithmetic [lora.r=4]`; `fedavg (10 rounds) [ε=1]` -> `fedavg (10 rounds)`."""
    stripped = re.sub(r"(ε|σ)=[^,\]]+(, )?", "", label)
    return re.sub(r" \[\]$", "", stripped.replace(", ]", "]"))


def privacy_curves(comparison: Comparison) -> dict[str, list[PrivacyPoint]]:
    """{method: points by ε} for every method compared at two or more privacy levels with a target ε
    (rows with a fixed σ have no ε to place them on)."""
    series: dict[str, list[PrivacyPoint]] = {}
    for row in comparison.rows:
        private, target = row.stats.get("private"), row.stats.get("target_epsilon")
        if row.reference or private is None or private.mean is None:
            continue
        if private.mean == 0:
            epsilon = math.inf
        elif private.mean == 1 and target is not None and target.mean is not None:
            epsilon = target.mean
        else:  # a fixed σ: no ε to place the row at
            continue
        point = PrivacyPoint(epsilon, row.stats["mean/auc"], row.stats["mean/acc"])
        series.setdefault(_without_privacy_tag(row.label), []).append(point)
    curves = {label: sorted(points, key=lambda p: p.epsilon) for label, points in series.items() if len(points) > 1}
    has_private = any(math.isfinite(p.epsilon) for points in curves.values() for p in points)
    return curves if has_private else {}
