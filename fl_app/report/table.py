"""The comparison table, pure: which model of each run is compared, grouped over seeds, best marked.

Compared models (one `Entry` per run each):
- one_shot runs: every `merged` version (the run's own merge, and any `remerge-*` added later),
  labelled by its merge method and the settings that differ from the run's (a remerge repeating
  the run's own merge is the same model and counted once); plus the reference row `hospital (own adapter, mean)`: each
  hospital's own adapter on its own test split, pooled per task (no communication needed).
- fedavg runs: the last round's global adapter, labelled `fedavg (R rounds)`.
- progressive versions (kind `progressive`): the last one.
Runs of a sweep that differ in more than the seed carry those settings in the label
(`task_arithmetic [lora.r=4]`), so rows group exactly the runs that differ only by seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fl_app.report.collect import Run
from strategies import spec_of_results

HOSPITAL_REFERENCE = "hospital (own adapter, mean)"
# Config keys never shown as a run's setting: the seed is what rows average over; the others are
# paths or are already in the label.
NOT_SETTINGS = frozenset(
    {"seed", "quiet", "data.root", "model.pretrained", "strategy.name", "strategy.merge", "strategy.rounds"}
)
KIND_ORDER = {"merged": 0, "progressive": 1, "fedavg": 2, "reference": 3, "hospital": 4}


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) over runs; std is None below two values."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not present:
            return cls(None, None, 0)
        return cls(statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present))


@dataclass(frozen=True)
class Column:
    key: str  # e.g. "bloodmnist/acc", "mean/auc", "upload_bytes"
    title: str
    higher_is_better: bool
    unit: str  # "" (a fraction), "bytes", "rounds", "s"


@dataclass(frozen=True)
class Entry:
    """One compared model of one run: a sample of a row."""

    label: str
    kind: str
    strategy: str
    folder: str
    seed: int | None
    values: dict[str, float | None]


@dataclass
class Row:
    """One method (a label) over the runs that differ only by seed."""

    label: str
    kind: str
    strategy: str
    entries: list[Entry]
    stats: dict[str, Stat]
    best: set[str] = field(default_factory=set)

    @property
    def reference(self) -> bool:
        """The hospitals' own adapters, or the pooled-data (centralised) adapter: references, not models
        the consortium could build, so they do not compete for the best value."""
        return self.kind in ("hospital", "reference")

    @property
    def seeds(self) -> list[int | None]:
        return [e.seed for e in self.entries]


@dataclass
class Comparison:
    tasks: list[str]
    columns: list[Column]
    rows: list[Row]
    settings: list[str]  # per run, in the order given: what distinguishes it besides the seed


def columns_for(tasks: Sequence[str], private: bool = False) -> list[Column]:
    """ACC and AUC per task and averaged over tasks, ε when any run is private, then the cost columns."""
    metric_columns = [
        Column(f"{task}/{m}", f"{task} {m.upper()}", True, "") for task in [*tasks, "mean"] for m in ("acc", "auc")
    ]
    privacy_columns = [Column("epsilon", "ε (max hospital)", False, "epsilon")] if private else []
    return (
        metric_columns
        + privacy_columns
        + [
            Column("upload_bytes", "upload", False, "bytes"),
            Column("download_bytes", "download", False, "bytes"),
            Column("rounds", "rounds", False, "rounds"),
            Column("wall_seconds", "wall time", False, "s"),
        ]
    )


def method_traffic(results: Mapping[str, Any]) -> dict[str, Any]:
    """The bytes a run's method needed: its training messages, plus a federated search's messages
    (MedForge, `search_traffic`) counted as one more round of traffic."""
    communication = dict(results.get("communication") or {})
    search = results.get("search_traffic")
    if not search:
        return communication
    return communication | {
        "upload_bytes": int(communication.get("upload_bytes", 0)) + int(search["upload_bytes"]),
        "download_bytes": int(communication.get("download_bytes", 0)) + int(search["download_bytes"]),
        "rounds": int(communication.get("rounds", 0)) + int(search["rounds"]),
        "per_hospital": {},  # totals only: a search has no FedAvg round to cut at
    }


def cumulative_bytes(communication: Mapping[str, Any], through_round: int | None = None) -> tuple[int, int]:
    """Training-phase (upload, download) bytes of all hospitals in rounds 1..`through_round` (None: all)."""
    per_hospital = communication.get("per_hospital") or {}
    if through_round is None or not per_hospital:
        return int(communication.get("upload_bytes", 0)), int(communication.get("download_bytes", 0))
    up = down = 0
    for hospital in per_hospital.values():
        for round_number, traffic in hospital.get("per_round", {}).items():
            if int(round_number) <= through_round:
                up += int(traffic["upload_bytes"])
                down += int(traffic["download_bytes"])
    return up, down


def metric_values(
    per_task: Mapping[str, Mapping[str, Any]], mean_acc: float | None, mean_auc: float | None
) -> dict[str, float | None]:
    values: dict[str, float | None] = {
        f"{task}/{m}": metrics.get(m) for task, metrics in per_task.items() for m in ("acc", "auc")
    }
    return values | {"mean/acc": mean_acc, "mean/auc": mean_auc}


def traffic_values(
    communication: Mapping[str, Any], through_round: int | None, wall_seconds: float | None
) -> dict[str, float | None]:
    up, down = cumulative_bytes(communication, through_round)
    rounds = through_round if through_round is not None else communication.get("rounds")
    return {
        "upload_bytes": up,
        "download_bytes": down,
        "total_bytes": up + down,
        "rounds": rounds,
        "wall_seconds": wall_seconds,
    }


def own_adapter_values(versions: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Each hospital's own adapter on its own test split, pooled per task (ACC and AUC weighted by test size)."""
    by_task: dict[str, list[tuple[int, float | None, float | None]]] = {}
    for version in versions:
        if version.get("kind") != "hospital":
            continue
        own = (version.get("per_hospital") or {}).get(str(version.get("hospital")))
        if own is None:  # older results: the version's pooled figures on its own task
            own = {"task": version.get("task"), **(version.get("per_task") or {}).get(str(version.get("task")), {})}
        if own.get("acc") is None:
            continue
        by_task.setdefault(str(own["task"]), []).append((int(own.get("n_test") or 1), own.get("acc"), own.get("auc")))
    per_task = {
        task: {"acc": _weighted([(n, acc) for n, acc, _ in rows]), "auc": _weighted([(n, auc) for n, _, auc in rows])}
        for task, rows in by_task.items()
    }
    return metric_values(
        per_task, _mean(p["acc"] for p in per_task.values()), _mean(p["auc"] for p in per_task.values())
    )


def _weighted(pairs: Sequence[tuple[int, float | None]]) -> float | None:
    present = [(n, v) for n, v in pairs if v is not None]
    total = sum(n for n, _ in present)
    return sum(n * v for n, v in present) / total if total else None


def _mean(values: Iterable[float | None]) -> float | None:
    return Stat.of(values).mean


def privacy_tag(results: Mapping[str, Any]) -> str:
    """`ε=8` (or `σ=1.1` for a fixed noise multiplier) for a run under DP; "" for a non-private one."""
    privacy = (results.get("config") or {}).get("privacy") or {}
    if not privacy.get("enabled"):
        return ""
    if privacy.get("epsilon") is not None:
        return f"ε={float(privacy['epsilon']):g}"
    return f"σ={float(privacy['noise_multiplier']):g}"


def privacy_values(results: Mapping[str, Any]) -> dict[str, float | None]:
    """The ε the run's hospitals report spending (the largest), the target ε, and whether it is private (1/0)."""
    config = (results.get("config") or {}).get("privacy") or {}
    private = bool(config.get("enabled"))
    return {
        "epsilon": (results.get("privacy") or {}).get("max_epsilon") if private else None,
        "target_epsilon": float(config["epsilon"]) if private and config.get("epsilon") is not None else None,
        "private": 1.0 if private else 0.0,
    }


def fedavg_label(rounds: int, settings: str) -> str:
    return _with_settings(f"fedavg ({rounds} rounds)", settings)


def _with_settings(label: str, settings: str) -> str:
    return f"{label} [{settings}]" if settings else label


def entries_of_run(
    results: Mapping[str, Any], folder: str, settings: str = "", fedavg_rounds: Sequence[int] = ()
) -> list[Entry]:
    """The compared models of one run (see the module docstring)."""
    versions = list(results.get("versions") or [])
    communication = method_traffic(results)
    wall = results.get("wall_seconds")
    strategy, seed = str(results.get("strategy")), results.get("seed")
    spec = spec_of_results(results)
    own_merge = str(results.get("merge"))

    dp = privacy_values(results)

    def entry(label: str, kind: str, values: dict[str, float | None]) -> Entry:
        return Entry(label, kind, strategy, folder, seed, values | (dp if kind != "hospital" else {}))

    entries = []
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for version in versions:
        by_kind.setdefault(str(version.get("kind")), []).append(version)
    for kind, group in by_kind.items():
        if kind == "merged":
            seen = set()
            for v in group:
                label = str(v.get("label") or v.get("method") or results.get("merge") or v["name"])
                if (v.get("search") or {}).get("source") == "federated":  # MedForge searched at the hospitals
                    label = label.replace("(one-shot)", "(one-shot, federated search)")
                if spec is not None and spec.report_baselines and not label.startswith(own_merge):
                    label = f"{label} ({strategy} baseline)"  # a data-free merge run beside the strategy's own
                if label in seen:  # a remerge repeating the run's own merge is the same model: counted once
                    continue
                seen.add(label)
                entries.append(
                    entry(
                        _with_settings(label, settings),
                        kind,
                        _version_values(v) | traffic_values(communication, None, wall),
                    )
                )
        elif kind == "fedavg":  # the last round, and any round asked for in `fedavg_rounds` (e.g. R = 1, 3, 10)
            last = max(group, key=lambda v: int(v.get("round", 0)))
            by_round = {int(v.get("round", 0)): v for v in group}
            shown = [by_round[r] for r in sorted(set(fedavg_rounds)) if r in by_round and by_round[r] is not last] + [
                last
            ]
            for version in shown:
                rounds = int(version.get("round", communication.get("rounds", 0)))
                time = wall if version is last else None  # the run's wall time covers every round
                entries.append(
                    entry(
                        fedavg_label(rounds, settings),
                        kind,
                        _version_values(version) | traffic_values(communication, rounds, time),
                    )
                )
        elif kind == "progressive":  # the last version of each method's main branch
            by_method: dict[str, Mapping[str, Any]] = {}
            for v in group:
                by_method[str(v.get("method") or results.get("merge") or "")] = v
            for method, last in by_method.items():
                label = f"progressive {method} (final: {last['name']})".replace("  ", " ")
                through = int(last["round"]) if "round" in last else None
                entries.append(
                    entry(
                        _with_settings(label, settings),
                        kind,
                        _version_values(last) | traffic_values(communication, through, wall),
                    )
                )
        elif kind == "reference":  # the centralised adapter: no federated traffic
            for v in group:
                no_traffic = {
                    "upload_bytes": None,
                    "download_bytes": None,
                    "total_bytes": None,
                    "rounds": None,
                    "wall_seconds": wall,
                }
                entries.append(
                    entry(
                        _with_settings(str(v.get("label") or v["name"]), settings),
                        kind,
                        _version_values(v) | no_traffic,
                    )
                )
        elif kind == "hospital":
            no_traffic = {
                "upload_bytes": None,
                "download_bytes": None,
                "total_bytes": None,
                "rounds": None,
                "wall_seconds": None,
            }
            entries.append(
                entry(_with_settings(HOSPITAL_REFERENCE, settings), kind, own_adapter_values(group) | no_traffic)
            )
        else:
            for v in group:
                entries.append(
                    entry(
                        _with_settings(f"{kind}: {v['name']}", settings),
                        kind,
                        _version_values(v) | traffic_values(communication, None, wall),
                    )
                )
    return entries


def _version_values(version: Mapping[str, Any]) -> dict[str, float | None]:
    return metric_values(version.get("per_task") or {}, version.get("mean_acc"), version.get("mean_auc"))


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> printable values (lists as [a,b])."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
    return flat


def run_settings(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per run, its privacy tag (`ε=8`) and the config keys that vary between runs of the same strategy
    and privacy level (besides the seed): the recipe `privacy=dp` implies is not repeated in labels."""
    flat = [flatten(r.get("config") or {}) for r in results]
    groups = [(str(r.get("strategy")), privacy_tag(r)) for r in results]
    varying = set()
    for key in set().union(*flat) - NOT_SETTINGS:
        if key.startswith("privacy."):
            continue
        for group in set(groups):
            values = {f[key] for f, g in zip(flat, groups) if g == group and key in f}
            if len(values) > 1:
                varying.add(key)
    return [
        ", ".join([t for t in [tag] if t] + [f"{key}={f[key]}" for key in sorted(varying) if key in f])
        for f, (_, tag) in zip(flat, groups)
    ]


def _without_duplicates(entries: Sequence[Entry]) -> list[Entry]:
    """One entry per (label, seed, figures): two runs of one seed that carry the same model (e.g. the
    hospitals' own adapters in a one_shot and a medforge run) count once, not as two seeds."""
    kept, seen = [], set()
    for e in entries:
        key = (e.label, e.seed, tuple(sorted((k, v) for k, v in e.values.items() if "/" in k)))
        if key not in seen:
            seen.add(key)
            kept.append(e)
    return kept


def compare_runs(runs: Sequence[Run], fedavg_rounds: Sequence[int] = ()) -> Comparison:
    """Rows over the runs (mean ± std over seeds), tasks in order of first appearance, best marked.

    fedavg_rounds: FedAvg rounds shown as rows of their own besides each run's last round."""
    results = [run.results for run in runs]
    settings = run_settings(results)
    entries = _without_duplicates(
        [e for run, s in zip(runs, settings) for e in entries_of_run(run.results, str(run.folder), s, fedavg_rounds)]
    )
    tasks = list(dict.fromkeys(t for r in results for t in (r.get("tasks") or [])))
    tasks += [
        t
        for t in dict.fromkeys(k.split("/")[0] for e in entries for k in e.values if "/" in k)
        if t not in tasks and t != "mean"
    ]
    columns = columns_for(tasks, private=any(privacy_tag(r) for r in results))
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.label, []).append(e)
    rows = [
        Row(
            label,
            group[0].kind,
            group[0].strategy,
            group,
            {
                key: Stat.of(e.values.get(key) for e in group)
                for key in dict.fromkeys(k for e in group for k in e.values)
            },
        )
        for label, group in groups.items()
    ]
    order = list(groups)
    rows.sort(key=lambda row: (KIND_ORDER.get(row.kind, len(KIND_ORDER)), order.index(row.label)))
    mark_best(rows, columns)
    return Comparison(tasks, columns, rows, settings)


def mark_best(rows: Sequence[Row], columns: Sequence[Column]) -> None:
    """Mark, per column, the rows with the best mean (ties all marked).

    Needs two candidates that differ; the reference row never competes.
    """
    for column in columns:
        candidates = [
            r for r in rows if not r.reference and column.key in r.stats and r.stats[column.key].mean is not None
        ]
        means = [r.stats[column.key].mean for r in candidates]
        if len(candidates) < 2 or all(math.isclose(m, means[0], rel_tol=1e-9, abs_tol=1e-12) for m in means):
            continue
        best = max(means) if column.higher_is_better else min(means)
        for row, mean in zip(candidates, means):
            if math.isclose(mean, best, rel_tol=1e-9, abs_tol=1e-12):
                row.best.add(column.key)
