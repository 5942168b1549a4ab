"""`forge credit`: what each hospital contributes to a version, as the metric drop when it is withdrawn.

Leave-one-out: credit_K(task) = metric(version) − metric(version without K), per task and in the
mean over tasks; positive means the consortium is better with K. The withdrawn versions are made
exactly as `withdraw` makes them, evaluated in one batch at every hospital, and not saved. A task
whose only hospital is K is lost without K (no head): shown as such.

Optionally Shapley values by permutation sampling (Castro et al. 2009; data Shapley, Ghorbani & Zou
2019): for `permutations` random orders of the hospitals, each hospital's marginal gain when it
joins those before it, averaged. Every distinct coalition is merged from scratch with the version's
recipe and evaluated once (at most permutations × (N − 1) versions, in one batch). A coalition
that cannot score a task (no hospital of it) scores chance there: ACC 1/classes, AUC 0.5; so the
values of one task sum to metric(version) − chance (efficiency).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fl_app.data import experiment_tasks
from fl_app.forge.recipe import build, members_of, recipe_of, revised_coefficients, with_coefficients
from fl_app.forge.versions import evaluate, find_version
from fl_app.forge.withdraw import withdrawn_version
from fl_app.remerge.stored import StoredRun, load_stored_run

METRICS = ("acc", "auc")


@dataclass(frozen=True)
class Credit:
    """One hospital's leave-one-out credit: per task and mean, for ACC and AUC (None: task lost or undefined)."""

    hospital: int
    task: str
    n_train: int
    coefficient: float
    per_task: dict[str, dict[str, float | None]]  # task -> {"acc": drop, "auc": drop}
    mean: dict[str, float | None]
    lost: list[str]  # tasks the version cannot score without this hospital


def _drop(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else before - after


def credits_from_entries(
    entry: Mapping[str, Any], without: Mapping[int, Mapping[str, Any]], run: StoredRun, version: str
) -> list[Credit]:
    """Leave-one-out credits from the version's entry and each withdrawn version's evaluated entry."""
    recipe = recipe_of(run, entry)
    members = members_of(run, recipe)
    tasks = sorted(entry.get("per_task") or {})
    credits = []
    for hospital, after in without.items():
        per_task = {
            task: {
                m: _drop(entry["per_task"][task].get(m), (after.get("per_task") or {}).get(task, {}).get(m))
                for m in METRICS
            }
            for task in tasks
        }
        lost = [task for task in tasks if task not in (after.get("per_task") or {})]
        mean = {m: _drop(entry.get(f"mean_{m}"), after.get(f"mean_{m}")) if not lost else None for m in METRICS}
        member = members[hospital]
        credits.append(
            Credit(hospital, member.task, member.n_train, recipe.coefficients[hospital], per_task, mean, lost)
        )
    return credits


def _cell(value: float | None, lost: bool) -> str:
    if lost:
        return "lost"
    return "–" if value is None else f"{value:+.3f}"


def credit_table(version: str, entry: Mapping[str, Any], credits: list[Credit]) -> list[str]:
    """The credit table: one row per hospital, ΔACC/ΔAUC per task and mean (version − version without it)."""
    tasks = sorted(entry.get("per_task") or {})
    header = ["hospital", "task", "n_train", "coef"]
    for task in tasks:
        header += [f"{task[:14]} ΔACC", "ΔAUC"]
    header += ["mean ΔACC", "ΔAUC"]
    rows = []
    for c in credits:
        row = [str(c.hospital), c.task, str(c.n_train), f"{c.coefficient:.3f}"]
        for task in tasks:
            row += [_cell(c.per_task[task][m], task in c.lost) for m in METRICS]
        row += [_cell(c.mean[m], False) if not c.lost else "–" for m in METRICS]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"credit of {version} ({entry.get('label') or entry.get('method')}; mean ACC {entry.get('mean_acc'):.3f} "
        f"AUC {entry.get('mean_auc'):.3f}): metric drop when each hospital is withdrawn (leave-one-out; + = it helps)",
        "  ".join(h.rjust(w) for h, w in zip(header, widths)),
    ]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    return lines


def leave_one_out(run: StoredRun, version: str, data_root: str | None = None) -> tuple[dict[str, Any], list[Credit]]:
    """The version's entry and every member's leave-one-out credit (evaluated in-process, nothing saved)."""
    entry = find_version(run.results, version, run.folder)
    recipe = recipe_of(run, entry)
    if len(recipe.hospitals) < 2:
        raise ValueError(f"version {version!r} merges {len(recipe.hospitals)} hospital(s); credit needs at least two.")
    candidates = [withdrawn_version(run, version, h, name=f"{version}-without-{h}") for h in recipe.hospitals]
    entries = evaluate(run, candidates, data_root)
    return entry, credits_from_entries(entry, dict(zip(recipe.hospitals, entries)), run, version)


def _chance(run: StoredRun, task: str) -> dict[str, float]:
    info = experiment_tasks(OmegaConf.to_container(run.experiment.data, resolve=True))[task]
    return {"acc": 0.5 if info.multi_label else 1.0 / info.n_outputs, "auc": 0.5}


def _value(entry: Mapping[str, Any] | None, task: str, metric: str, chance: Mapping[str, float]) -> float:
    value = None if entry is None else (entry.get("per_task") or {}).get(task, {}).get(metric)
    return chance[metric] if value is None else float(value)


def shapley(
    run: StoredRun, version: str, permutations: int, seed: int = 0, data_root: str | None = None
) -> tuple[dict[int, dict[str, dict[str, float]]], int]:
    """Shapley values per hospital, task and metric by permutation sampling; and the coalitions evaluated."""
    if permutations < 1:
        raise ValueError(f"--shapley {permutations}: give a positive number of permutations.")
    entry = find_version(run.results, version, run.folder)
    recipe = recipe_of(run, entry)
    members = members_of(run, recipe)
    n_train = {h: m.n_train for h, m in members.items()}
    rng = random.Random(seed)
    orders = [rng.sample(recipe.hospitals, len(recipe.hospitals)) for _ in range(permutations)]
    full = frozenset(recipe.hospitals)
    coalitions = sorted(
        {frozenset(order[:k]) for order in orders for k in range(1, len(order))} - {full}, key=lambda c: sorted(c)
    )
    versions = []
    for i, coalition in enumerate(coalitions):
        ids = [h for h in recipe.hospitals if h in coalition]
        sub = replace(with_coefficients(recipe, revised_coefficients(recipe, ids, n_train)), sources={})
        versions.append(build(run, sub, f"coalition-{i}", [members[h] for h in ids]))
    evaluated = dict(zip(coalitions, evaluate(run, versions, data_root))) if versions else {}
    evaluated[full] = entry
    tasks = sorted(entry.get("per_task") or {})
    chance = {t: _chance(run, t) for t in tasks}
    values = {h: {t: {m: 0.0 for m in METRICS} for t in tasks} for h in recipe.hospitals}
    for order in orders:
        before: frozenset[int] = frozenset()
        for h in order:
            after = before | {h}
            for t in tasks:
                for m in METRICS:
                    gain = _value(evaluated[after], t, m, chance[t]) - _value(evaluated.get(before), t, m, chance[t])
                    values[h][t][m] += gain / len(orders)
            before = after
    return values, len(coalitions)


def shapley_table(
    version: str, values: Mapping[int, Mapping[str, Mapping[str, float]]], permutations: int, evaluated: int
) -> list[str]:
    tasks = sorted(next(iter(values.values())))
    header = ["hospital"]
    for t in tasks:
        header += [f"{t[:14]} φACC", "φAUC"]
    header += ["mean φACC", "φAUC"]
    rows = []
    for h, per_task in values.items():
        row = [str(h)]
        for t in tasks:
            row += [f"{per_task[t][m]:+.3f}" for m in METRICS]
        row += [f"{sum(per_task[t][m] for t in tasks) / len(tasks):+.3f}" for m in METRICS]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"Shapley values of {version} by permutation sampling: {permutations} permutations, {evaluated} coalitions "
        "merged and evaluated (a task no hospital of a coalition holds scores chance)",
        "  ".join(x.rjust(w) for x, w in zip(header, widths)),
    ]
    return lines + ["  ".join(x.rjust(w) for x, w in zip(row, widths)) for row in rows]


def credit(
    run_dir: Path, version: str, data_root: str | None = None, permutations: int = 0, seed: int = 0
) -> list[str]:
    """The `credit` command's table (and the Shapley table with `permutations`)."""
    run = load_stored_run(run_dir)
    entry, credits = leave_one_out(run, version, data_root)
    lines = credit_table(version, entry, credits)
    if permutations:
        values, evaluated = shapley(run, version, permutations, seed, data_root)
        lines += ["", *shapley_table(version, values, permutations, evaluated)]
    return lines
