"""Write report.md, report.csv and the PNG plots of a comparison into one folder."""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from fl_app.report.collect import Run
from fl_app.report.curves import fedavg_curves, one_shot_points, privacy_curves, progressive_curves
from fl_app.report.plots import (
    plot_accuracy_vs_bytes,
    plot_per_task_accuracy,
    plot_privacy_utility,
    plot_progressive,
)
from fl_app.report.table import Column, Comparison, Row, Stat, compare_runs

logger = logging.getLogger("medforge.report")

REPORT_MD, REPORT_CSV = "report.md", "report.csv"
PLOT_FILES = {
    "per_task_accuracy.png": "Test accuracy per task by method",
    "accuracy_vs_bytes.png": "Accuracy against communication",
    "progressive.png": "Progressive merging: accuracy of each version",
    "privacy_utility.png": "Privacy against utility: AUC and ACC at each ε",
}

HOW_TO_READ = """\
- **Rows** are methods. One-shot runs contribute their `merged` version, labelled by merge method
  (and every `remerge-*` version added by `scripts/remerge.py`); FedAvg runs their last round,
  `fedavg (R rounds)`. `hospital (own adapter, mean)` is a reference, not a deployable model: each
  hospital's own adapter on its own test split, pooled per task; it needs no communication.
  Runs that differ in more than the seed carry those settings in brackets, e.g. `[lora.r=4]`.
- **Cells** are mean ± sample standard deviation over the rows' runs (normally: seeds); `runs` says
  how many. ACC and AUC are MedMNIST's definitions on the hospitals' test splits, pooled per task;
  `mean` averages the tasks with equal weight. A dash: not defined (e.g. AUC on a one-class split).
- **Cost**: `upload` and `download` are the bytes of the training messages of all hospitals
  together (adapter tensors and instructions, as sent), up to the compared round; the evaluation
  traffic is not included. `wall time` is the whole run (training, merge, evaluation of every version).
- **Privacy**: rows of runs under DP carry `[ε=8]` (the hospitals' target); the `ε (max hospital)`
  column is the largest ε a hospital's accountant reports for the whole run (every round, and the
  calibration set if any) at its δ (results.json `privacy`). Rows without a tag are not private (ε = ∞).
- **Bold**: the best row of each column (highest ACC/AUC, lowest cost) among the methods; the
  reference row does not compete.
"""


def _fraction(stat: Stat) -> str:
    if stat.mean is None:
        return "–"
    return f"{stat.mean:.3f}" + (f" ± {stat.std:.3f}" if stat.std is not None else "")


def _bytes(value: float) -> str:
    for size, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def format_cell(stat: Stat, unit: str) -> str:
    """A table cell: mean ± std in the column's unit, a dash when there is no value."""
    if stat.mean is None:
        return "–"
    spread = stat.std is not None and stat.std > 0
    if unit == "bytes":
        return _bytes(stat.mean) + (f" ± {_bytes(stat.std)}" if spread else "")
    if unit == "rounds":
        return f"{stat.mean:g}" + (f" ± {stat.std:.1f}" if spread else "")
    if unit == "s":
        return f"{stat.mean:.0f} s" + (f" ± {stat.std:.0f}" if spread else "")
    if unit == "epsilon":
        return f"{stat.mean:.2f}" + (f" ± {stat.std:.2f}" if spread else "")
    return _fraction(stat)


def markdown_table(comparison: Comparison) -> str:
    header = ["method", "runs", *(c.title for c in comparison.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in comparison.rows:
        cells = [row.label.replace("|", "/"), str(len(row.entries))]
        for column in comparison.columns:
            cell = format_cell(row.stats.get(column.key, Stat(None, None, 0)), column.unit)
            cells.append(f"**{cell}**" if column.key in row.best else cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv_header(columns: Sequence[Column]) -> list[str]:
    return [
        "method",
        "kind",
        "strategy",
        "runs",
        "seeds",
        *(f"{c.key}_{s}" for c in columns for s in ("mean", "std")),
        "best",
    ]


def _csv_row(row: Row, columns: Sequence[Column]) -> list[str]:
    values = []
    for column in columns:
        stat = row.stats.get(column.key, Stat(None, None, 0))
        values += ["" if stat.mean is None else repr(stat.mean), "" if stat.std is None else repr(stat.std)]
    seeds = ";".join(str(s) for s in row.seeds)
    return [
        row.label,
        row.kind,
        row.strategy,
        str(len(row.entries)),
        seeds,
        *values,
        ";".join(c.key for c in columns if c.key in row.best),
    ]


def write_csv(comparison: Comparison, path: Path) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(_csv_header(comparison.columns))
        writer.writerows(_csv_row(row, comparison.columns) for row in comparison.rows)
    return path


def _relative(folder: Path, out_dir: Path) -> str:
    try:
        return os.path.relpath(folder, out_dir)
    except ValueError:  # another drive
        return str(folder)


def _runs_table(runs: Sequence[Run], out_dir: Path, settings: Sequence[str]) -> str:
    lines = [
        "| folder | strategy | merge | seed | settings | data | status | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, setting in zip(runs, settings):
        r = run.results
        lines.append(
            f"| `{_relative(run.folder, out_dir)}` | {r.get('strategy')} | {r.get('merge') or '–'} | {r.get('seed')} | "
            f"{setting or '–'} | {r.get('data_source')} | {r.get('status')} | {float(r.get('wall_seconds') or 0):.0f} s |"
        )
    return "\n".join(lines)


def _summary(runs: Sequence[Run], out_dir: Path) -> str:
    strategies = Counter(str(run.results.get("strategy")) for run in runs)
    seeds = sorted({run.results.get("seed") for run in runs}, key=str)
    text = f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({', '.join(f'{n} {s}' for s, n in strategies.items())}), seeds {', '.join(map(str, seeds))}."
    synthetic = sum(1 for run in runs if run.results.get("data_source") in ("synthetic", "mixed", None))
    if synthetic:
        text += (
            f"\n\n> **{synthetic} of {len(runs)} runs used synthetic stand-ins** (`data_source` is not `medmnist`): "
            "these numbers test the pipeline, not medicine. Point `data.root` at MedMNIST files for real ones."
        )
    return text


def write_report(runs: Sequence[Run], out_dir: Path, fedavg_rounds: Sequence[int] = ()) -> dict[str, Path]:
    """Compare `runs`; write report.md, report.csv and the plots into `out_dir`; return what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    comparison = compare_runs(runs, fedavg_rounds)
    written = {"csv": write_csv(comparison, out_dir / REPORT_CSV)}
    logger.info("Comparing %d runs: %d rows, tasks %s", len(runs), len(comparison.rows), comparison.tasks)
    written["per_task_accuracy.png"] = plot_per_task_accuracy(comparison, out_dir / "per_task_accuracy.png")
    fedavg = fedavg_curves(runs, comparison)
    if fedavg or one_shot_points(comparison):
        written["accuracy_vs_bytes.png"] = plot_accuracy_vs_bytes(comparison, fedavg, out_dir / "accuracy_vs_bytes.png")
    if progressive := progressive_curves(runs, comparison):
        written["progressive.png"] = plot_progressive(progressive, out_dir / "progressive.png")
    if privacy := privacy_curves(comparison):
        written["privacy_utility.png"] = plot_privacy_utility(privacy, out_dir / "privacy_utility.png")
    plots = "\n\n".join(f"![{title}]({name})" for name, title in PLOT_FILES.items() if name in written)
    if not progressive:
        plots += "\n\nNo progressive versions (kind `progressive`) in these runs: no progressive curve."
    markdown = "\n\n".join(
        [
            "# MedForge comparison report",
            _summary(runs, out_dir),
            "## Results (mean ± std over seeds)",
            markdown_table(comparison),
            "## How to read this",
            HOW_TO_READ.rstrip(),
            "## Plots",
            plots,
            "## Runs",
            _runs_table(runs, out_dir, comparison.settings),
        ]
    )
    (out_dir / REPORT_MD).write_text(markdown + "\n")
    written["md"] = out_dir / REPORT_MD
    return written
