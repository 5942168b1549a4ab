"""What a person sees at the end of a run: a short table of every model version from results.json.

One row per version: mean test ACC and AUC (and each task's when there are few), the training
bytes up and down behind it (a FedAvg round counts the rounds up to it), then the wall time and
whether the data were real or synthetic. The scripts print the results folder after it, last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fl_app.report.table import cumulative_bytes, method_traffic

MAX_TASK_COLUMNS = 4  # more tasks than this: means only (the report has every task)
DATA_SOURCES = {
    "medmnist": "real (MedMNIST files)",
    "images": "real (the sites' own images)",
    "mixed": "MIXED: some hospitals used SYNTHETIC stand-ins",
    "synthetic": "SYNTHETIC stand-ins (no MedMNIST file found): the numbers say nothing about real data",
}


def _metric(value: Any) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def version_row(entry: Mapping[str, Any], tasks: Sequence[str], communication: Mapping[str, Any]) -> list[str]:
    """One version's cells: name, mean ACC/AUC, per-task ACC/AUC (for `tasks`), bytes up and down."""
    per_task = entry.get("per_task") or {}
    cells = [str(entry["name"]), _metric(entry.get("mean_acc")), _metric(entry.get("mean_auc"))]
    for task in tasks:
        metrics = per_task.get(task) or {}
        cells.append(f"{_metric(metrics.get('acc'))}/{_metric(metrics.get('auc'))}")
    up, down = cumulative_bytes(communication, entry.get("round") if entry.get("kind") == "fedavg" else None)
    return [*cells, _bytes(up), _bytes(down)]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers, two spaces between columns."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def run_summary(results: Mapping[str, Any]) -> list[str]:
    """The end-of-run table of a results.json dict, as lines (the results folder is printed after it)."""
    versions = results.get("versions") or []
    tasks = list(results.get("tasks") or sorted({t for v in versions for t in v.get("per_task") or {}}))
    shown = tasks if len(tasks) <= MAX_TASK_COLUMNS else []
    header = ["version", "mean ACC", "mean AUC", *(f"{t} ACC/AUC" for t in shown), "bytes up", "bytes down"]
    communication = method_traffic(results)
    rows = [version_row(v, shown, communication) for v in versions]
    merge = f", merge {results['merge']}" if results.get("merge") else ""
    lines = [
        f"MedForge run: strategy {results.get('strategy')}{merge}, {len(results.get('hospitals') or [])} hospitals, status {results.get('status')}"
    ]
    lines += format_table(header, rows) if rows else ["(no model version was evaluated)"]
    if len(tasks) > MAX_TASK_COLUMNS:
        lines.append(f"{len(tasks)} tasks: per-task figures in results.json and `scripts/compare.py`.")
    lines += truncation_lines(versions)
    if results.get("failures"):
        lines.append(f"{len(results['failures'])} failure(s) recorded: see `failures` in results.json.")
    search = " and the federated search's" if results.get("search_traffic") else ""
    lines.append(
        f"wall time {float(results.get('wall_seconds') or 0.0):.1f} s; bytes are the training messages{search} (evaluation excluded)."
    )
    lines += profile_lines(results.get("profile"))
    source = results.get("data_source")
    lines.append(f"data: {DATA_SOURCES.get(source, 'unknown')} (data_source={source})")
    return lines


def profile_lines(profile: Mapping[str, float] | None) -> list[str]:
    """Where the run's time went, phase by phase (server-side wall seconds; `*_at_hospitals`: summed hospital work)."""
    if not profile:
        return []
    parts = [f"{phase.replace('_', ' ')} {float(seconds):.1f} s" for phase, seconds in profile.items() if seconds]
    return [f"time by phase: {'; '.join(parts)}"]


def truncation_lines(versions: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per merged version whose rank cap lost part of ΔW: what `merge_rank` cost."""
    lines = []
    for entry in versions:
        truncation = entry.get("truncation") or {}
        if not truncation.get("max"):
            continue
        lines.append(
            f"{entry['name']}: rank {entry.get('rank')} keeps ΔW up to a relative error of {truncation['mean']:.3f} "
            f"(mean over modules; max {truncation['max']:.3f}, {truncation['modules_over_1pct']}/{len(truncation['per_module'])} modules above 1%)"
        )
    return lines
