"""The diagnosis as files: JSON of every number, Markdown tables, and the objective-vs-reality figure."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return lines


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


def objective_figure(searches: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    """One panel per calibration source: each evaluated point's calibration loss against the real
    validation loss of the same merge, with the correlation in the panel's title."""
    import matplotlib  # noqa: PLC0415 - only the diagnosis draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(searches), figsize=(4.2 * len(searches), 3.6), squeeze=False)
    for ax, (source, search) in zip(axes[0], searches.items()):
        x = [p["calibration_loss"] for p in search["points"]]
        y = [p["val_loss"] for p in search["points"]]
        ax.scatter(x, y, s=14, alpha=0.7)
        ax.set_title(f"{source}: r={_cell(search['correlation'])}, ρ={_cell(search['spearman'])}", fontsize=9)
        ax.set_xlabel("calibration loss (what the search sees)")
        ax.set_ylabel("real validation loss")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
