"""Series for the plots, pure: accuracy against bytes sent, per FedAvg round and per progressive version."""

from __future__ import annotations

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
