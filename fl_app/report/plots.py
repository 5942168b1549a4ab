"""PNG plots of a comparison (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fl_app.report.curves import Curve, PrivacyPoint, one_shot_points  # noqa: E402
from fl_app.report.table import Comparison, Row, Stat  # noqa: E402

DPI = 130
BYTE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "bytes"))


def _mean(stat: Stat | None) -> float:
    return np.nan if stat is None or stat.mean is None else stat.mean


def _std(stat: Stat | None) -> float:
    return 0.0 if stat is None or stat.std is None else stat.std


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _legend_below(ax, n: int) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(2, max(1, n)), frameon=False, fontsize=9)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _byte_unit(largest: float) -> tuple[float, str]:
    return next(((size, name) for size, name in BYTE_UNITS if largest >= size), (1.0, "bytes"))


def plot_per_task_accuracy(comparison: Comparison, path: Path) -> Path:
    """Grouped bars: test accuracy per task (and the mean over tasks) for every row, ± std over seeds."""
    groups = [*comparison.tasks, "mean"]
    rows = comparison.rows
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 + len(groups) * (0.6 + 0.28 * len(rows))), 4.8))
    x = np.arange(len(groups))
    for i, (row, color) in enumerate(zip(rows, _colors(len(rows)))):
        stats = [row.stats.get(f"{g}/acc") for g in groups]
        errors = [_std(s) for s in stats]
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            [_mean(s) for s in stats],
            width,
            yerr=errors if any(errors) else None,
            capsize=3,
            color=color,
            hatch="//" if row.reference else None,
            edgecolor="white" if not row.reference else "black",
            label=f"{row.label} (n={len(row.entries)})",
        )
    ax.set_xticks(x, [g if g != "mean" else "mean over tasks" for g in groups])
    ax.set_ylabel("test accuracy (ACC, 0 to 1)")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Test accuracy per task by method\n(bars: mean over seeds, whiskers: ± std; n = runs)")
    _legend_below(ax, len(rows))
    return _save(fig, path)


def _reference(comparison: Comparison) -> Row | None:
    return next((row for row in comparison.rows if row.reference), None)


def plot_accuracy_vs_bytes(comparison: Comparison, fedavg: Sequence[Curve], path: Path) -> Path:
    """Mean accuracy against total bytes sent: FedAvg as a curve over rounds, one-shot merges as points."""
    points = one_shot_points(comparison)
    all_bytes = [p.total_bytes.mean for c in fedavg for p in c.points if p.total_bytes.mean] + [
        b.mean for _, b, _ in points if b.mean
    ]
    scale, unit = _byte_unit(max(all_bytes, default=1.0))
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    colors = iter(_colors(len(fedavg) + len(points)))
    for curve in fedavg:
        xs = [_mean(p.total_bytes) / scale for p in curve.points]
        ys = [_mean(p.mean_acc) for p in curve.points]
        ax.errorbar(
            xs,
            ys,
            yerr=[_std(p.mean_acc) for p in curve.points],
            fmt="-o",
            capsize=3,
            color=next(colors),
            label=f"{curve.label}: after each round",
        )
        for point, xv, yv in zip(curve.points, xs, ys):
            ax.annotate(f"round {point.step}", (xv, yv), textcoords="offset points", xytext=(6, -12), fontsize=8)
    for marker, (label, total, acc) in zip("s^Dvp*hX" * 4, points):
        ax.errorbar(
            _mean(total) / scale,
            _mean(acc),
            yerr=_std(acc),
            fmt=marker,
            markersize=9,
            capsize=3,
            color=next(colors),
            label=f"{label}: one-shot",
        )
    if (reference := _reference(comparison)) is not None and reference.stats["mean/acc"].mean is not None:
        ax.axhline(
            reference.stats["mean/acc"].mean, linestyle="--", color="gray", label=f"{reference.label}: no communication"
        )
    if all_bytes and max(all_bytes) / max(min(all_bytes), 1.0) > 30:
        ax.set_xscale("log")
    else:
        ax.set_xlim(left=0, right=max(all_bytes, default=1.0) / scale * 1.15)
    ax.set_xlabel(f"total bytes sent during training, upload + download, all hospitals ({unit})")
    ax.set_ylabel("mean test accuracy over the tasks\nmerged so far (0 to 1)")
    ax.set_title("Accuracy against communication\n(mean over seeds, whiskers: ± std)")
    ax.grid(alpha=0.3)
    _legend_below(ax, len(fedavg) + len(points) + 1)
    return _save(fig, path)


def plot_progressive(curves: Sequence[Curve], path: Path) -> Path:
    """Mean accuracy of each progressive version (v1, v2, ...): how the main branch grows."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for curve, color in zip(curves, _colors(len(curves))):
        ys = [_mean(p.mean_acc) for p in curve.points]
        ax.errorbar(
            range(len(ys)),
            ys,
            yerr=[_std(p.mean_acc) for p in curve.points],
            fmt="-o",
            capsize=3,
            color=color,
            label=curve.label,
        )
    steps = max((c.points for c in curves), key=len, default=[])
    ax.set_xticks(range(len(steps)), [p.step for p in steps])
    ax.set_xlabel("model version (each one merges the adapters that have arrived so far)")
    ax.set_ylabel("mean test accuracy over the tasks\nmerged so far (0 to 1)")
    ax.set_title("Progressive merging: accuracy of each version\n(mean over seeds, whiskers: ± std)")
    ax.grid(alpha=0.3)
    _legend_below(ax, len(curves))
    return _save(fig, path)


def plot_privacy_utility(curves: dict[str, list[PrivacyPoint]], path: Path) -> Path:
    """Mean AUC and mean ACC (± std over seeds) against the hospitals' target ε; ∞ = not private."""
    levels = sorted({p.epsilon for points in curves.values() for p in points})
    position = {eps: i for i, eps in enumerate(levels)}
    ticks = ["∞ (no DP)" if math.isinf(eps) else f"{eps:g}" for eps in levels]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for (label, points), color in zip(curves.items(), _colors(len(curves))):
        x = [position[p.epsilon] for p in points]
        for ax, key in zip(axes, ("mean_auc", "mean_acc")):
            stats = [getattr(p, key) for p in points]
            ax.errorbar(
                x,
                [_mean(s) for s in stats],
                yerr=[_std(s) for s in stats],
                marker="o",
                capsize=3,
                color=color,
                label=label,
            )
    for ax, title in zip(axes, ("mean AUC over tasks", "mean ACC over tasks")):
        ax.set_xticks(range(len(levels)), ticks)
        ax.set_xlabel("ε per hospital, whole run")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    _legend_below(axes[0], len(curves))
    fig.suptitle("Privacy against utility: DP-SGD on LoRA + head at every hospital (mean ± std over seeds)")
    return _save(fig, path)
