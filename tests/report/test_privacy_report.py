"""Runs under DP in the comparison: `[ε=8]` rows, the ε column, the privacy-utility curve."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_app.report import Run, compare_runs, write_report
from fl_app.report.curves import privacy_curves
from tests.report.synthetic_results import one_shot_results


def private(results: dict, epsilon: float | None, spent: float | None = None) -> dict:
    """The same run, made under privacy=dp at `epsilon` (None: the non-private run with the DP preset's recipe)."""
    config = {**results["config"], "train": {"early_stopping": epsilon is None, "class_weighting": "none"}}
    if epsilon is not None:
        config["privacy"] = {"enabled": True, "epsilon": epsilon, "noise_multiplier": None}
        return {**results, "config": config, "privacy": {"max_epsilon": spent if spent is not None else epsilon - 0.01}}
    config["train"] = {"early_stopping": True, "class_weighting": "balanced"}
    return {**results, "config": config}


@pytest.fixture
def curve_runs() -> list[Run]:
    runs = []
    for epsilon, acc in [(None, 0.9), (8.0, 0.8), (1.0, 0.6)]:
        for seed in (0, 1):
            base = one_shot_results(seed, {"breastmnist": acc + 0.02 * seed, "bloodmnist": acc})
            runs.append(Run(Path(f"eps{epsilon}/s{seed}"), private(base, epsilon)))
    return runs


def test_private_runs_are_rows_of_their_own_tagged_with_epsilon_and_the_recipe_is_not_repeated(curve_runs):
    comparison = compare_runs(curve_runs)

    rows = {row.label: row for row in comparison.rows}
    assert {"task_arithmetic", "task_arithmetic [ε=8]", "task_arithmetic [ε=1]"} <= set(rows)
    assert rows["task_arithmetic [ε=8]"].stats["breastmnist/acc"].mean == pytest.approx(0.81)
    assert rows["task_arithmetic [ε=8]"].stats["epsilon"].mean == pytest.approx(7.99)
    assert rows["task_arithmetic"].stats["epsilon"].mean is None
    assert "ε (max hospital)" in [c.title for c in comparison.columns]


def test_the_privacy_curve_places_the_non_private_run_at_infinity(curve_runs):
    curves = privacy_curves(compare_runs(curve_runs))

    assert list(curves) == ["task_arithmetic"]
    points = curves["task_arithmetic"]
    assert [p.epsilon for p in points] == [1.0, 8.0, float("inf")]
    assert [round(p.mean_acc.mean, 3) for p in points] == [0.605, 0.805, 0.905]


def test_reports_without_private_runs_have_no_epsilon_column_and_no_curve(sweep_runs, tmp_path):
    comparison = compare_runs(sweep_runs)

    assert "epsilon" not in [c.key for c in comparison.columns]
    assert privacy_curves(comparison) == {}
    assert "privacy_utility.png" not in write_report(sweep_runs, tmp_path)


def test_the_report_draws_the_privacy_utility_plot(curve_runs, tmp_path):
    written = write_report(curve_runs, tmp_path)

    assert written["privacy_utility.png"].stat().st_size > 10_000
    markdown = written["md"].read_text()
    assert "![Privacy against utility" in markdown and "| task_arithmetic [ε=1] |" in markdown
