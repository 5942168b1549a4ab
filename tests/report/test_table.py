"""The comparison table's math on synthetic results: selection, mean ± std over seeds, bytes, best."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from fl_app.report import Run, compare_runs, cumulative_bytes, fedavg_curves, progressive_curves
from fl_app.report.table import HOSPITAL_REFERENCE, Stat
from tests.report.synthetic_results import (
    ADAPTER_BYTES,
    INSTRUCTION_BYTES,
    communication,
    fedavg_results,
    one_shot_results,
    version,
)


def rows_by_label(comparison):
    return {row.label: row for row in comparison.rows}


def test_stat_is_mean_and_sample_std_ignoring_missing_values():
    stat = Stat.of([0.6, None, 0.8, float("nan")])

    assert stat.mean == pytest.approx(0.7) and stat.std == pytest.approx(statistics.stdev([0.6, 0.8])) and stat.n == 2
    assert Stat.of([0.5]).std is None and Stat.of([None]).mean is None


def test_rows_average_each_method_over_seeds(sweep_runs):
    comparison = compare_runs(sweep_runs)

    rows = rows_by_label(comparison)
    assert list(rows) == ["task_arithmetic", "fedavg (2 rounds)", HOSPITAL_REFERENCE]
    merged = rows["task_arithmetic"].stats
    assert merged["breastmnist/acc"].mean == pytest.approx(0.7) and merged["breastmnist/acc"].std == pytest.approx(
        statistics.stdev([0.6, 0.8])
    )
    assert merged["mean/acc"].mean == pytest.approx((0.5 + 0.7) / 2)
    assert merged["wall_seconds"].mean == pytest.approx(50.0)
    assert rows["task_arithmetic"].seeds == [0, 1]


def test_fedavg_row_is_the_last_round_with_the_bytes_of_all_rounds(sweep_runs):
    fedavg = rows_by_label(compare_runs(sweep_runs))["fedavg (2 rounds)"].stats

    assert fedavg["breastmnist/acc"].mean == pytest.approx(0.8) and fedavg["bloodmnist/acc"].mean == pytest.approx(0.7)
    assert fedavg["upload_bytes"].mean == 2 * 2 * ADAPTER_BYTES  # 2 hospitals x 2 rounds
    assert fedavg["download_bytes"].mean == 2 * 2 * INSTRUCTION_BYTES
    assert fedavg["rounds"].mean == 2


def test_cumulative_bytes_count_rounds_up_to_k():
    traffic = communication(rounds=3, hospitals=2)

    assert cumulative_bytes(traffic, 1) == (2 * ADAPTER_BYTES, 2 * INSTRUCTION_BYTES)
    assert cumulative_bytes(traffic, 2) == (4 * ADAPTER_BYTES, 4 * INSTRUCTION_BYTES)
    assert cumulative_bytes(traffic) == (traffic["upload_bytes"], traffic["download_bytes"])


def test_hospital_reference_pools_each_own_adapter_on_its_own_split(sweep_runs):
    reference = rows_by_label(compare_runs(sweep_runs))[HOSPITAL_REFERENCE]

    assert reference.reference and reference.stats["breastmnist/acc"].mean == pytest.approx(0.9)
    assert reference.stats["bloodmnist/acc"].mean == pytest.approx(0.7)
    assert reference.stats["mean/acc"].mean == pytest.approx(0.8)
    assert reference.stats["upload_bytes"].mean is None  # no communication


def test_best_is_marked_per_column_and_the_reference_never_competes(sweep_runs):
    rows = rows_by_label(compare_runs(sweep_runs))

    assert "bloodmnist/acc" in rows["fedavg (2 rounds)"].best  # 0.7 > 0.5
    assert "upload_bytes" in rows["task_arithmetic"].best and "wall_seconds" in rows["task_arithmetic"].best
    assert not rows[HOSPITAL_REFERENCE].best  # 0.9 on breastmnist, but a reference
    assert "breastmnist/acc" in rows["fedavg (2 rounds)"].best


def test_a_column_where_all_methods_tie_marks_nothing():
    runs = [
        Run(
            Path("a"),
            one_shot_results(
                0,
                {"breastmnist": 0.5, "bloodmnist": 0.5},
                extra_versions=[
                    version(
                        "remerge-ties",
                        "merged",
                        {"breastmnist": 0.5, "bloodmnist": 0.6},
                        method="ties",
                        label="ties (density=0.5)",
                    )
                ],
            ),
        )
    ]

    rows = rows_by_label(compare_runs(runs))

    assert "breastmnist/acc" not in rows["task_arithmetic"].best | rows["ties (density=0.5)"].best
    assert rows["ties (density=0.5)"].best >= {"bloodmnist/acc"}


def test_runs_that_differ_beyond_the_seed_are_separate_rows():
    runs = [
        Run(Path(f"r{r}s{s}"), one_shot_results(s, {"breastmnist": 0.1 * r, "bloodmnist": 0.5}, lora_r=r))
        for r in (4, 8)
        for s in (0, 1)
    ]

    comparison = compare_runs(runs)

    rows = rows_by_label(comparison)
    assert rows["task_arithmetic [lora.r=4]"].stats["breastmnist/acc"].mean == pytest.approx(0.4)
    assert rows["task_arithmetic [lora.r=8]"].stats["breastmnist/acc"].mean == pytest.approx(0.8)
    assert comparison.settings == ["lora.r=4", "lora.r=4", "lora.r=8", "lora.r=8"]


def test_fedavg_curve_has_one_point_per_round_with_cumulative_bytes(sweep_runs):
    comparison = compare_runs(sweep_runs)

    (curve,) = fedavg_curves(sweep_runs, comparison)

    assert curve.label == "fedavg (2 rounds)" and [p.step for p in curve.points] == ["1", "2"]
    assert [p.total_bytes.mean for p in curve.points] == [
        2 * (ADAPTER_BYTES + INSTRUCTION_BYTES),
        4 * (ADAPTER_BYTES + INSTRUCTION_BYTES),
    ]
    assert curve.points[0].mean_acc.mean == pytest.approx((0.5 + 0.4) / 2)


def test_progressive_versions_make_a_curve_and_their_absence_makes_none(sweep_runs):
    assert progressive_curves(sweep_runs, compare_runs(sweep_runs)) == []
    progressive = [
        version(f"v{k}", "progressive", {"breastmnist": 0.2 * k, "bloodmnist": 0.1 * k}, method="task_arithmetic")
        for k in (1, 2, 3)
    ]
    runs = [
        Run(
            Path("p"),
            {
                **fedavg_results(0, [{"breastmnist": 0.5, "bloodmnist": 0.5}]),
                "strategy": "progressive",
                "versions": progressive,
            },
        )
    ]

    comparison = compare_runs(runs)
    (curve,) = progressive_curves(runs, comparison)

    assert [p.step for p in curve.points] == ["v1", "v2", "v3"] and math.isclose(curve.points[2].mean_acc.mean, 0.45)
    assert comparison.rows[0].label == "progressive task_arithmetic (final: v3)"


def test_a_remerge_repeating_the_runs_own_merge_is_counted_once():
    again = version(
        "remerge-task_arithmetic",
        "merged",
        {"breastmnist": 0.6, "bloodmnist": 0.4},
        method="task_arithmetic",
        label="task_arithmetic",
    )
    runs = [Run(Path("a"), one_shot_results(0, {"breastmnist": 0.6, "bloodmnist": 0.4}, extra_versions=[again]))]

    rows = rows_by_label(compare_runs(runs))

    assert len(rows["task_arithmetic"].entries) == 1


def test_fedavg_rounds_asked_for_become_rows_with_the_bytes_up_to_that_round(sweep_runs):
    # Execute
    rows = rows_by_label(compare_runs(sweep_runs, fedavg_rounds=[1, 7]))
    # Assert: round 1 as its own row (round 7 does not exist and is not invented), the last round as before
    first = rows["fedavg (1 rounds)"].stats
    assert first["breastmnist/acc"].mean == pytest.approx(0.5) and first["bloodmnist/acc"].mean == pytest.approx(0.4)
    assert first["upload_bytes"].mean == 2 * ADAPTER_BYTES and first["rounds"].mean == 1
    assert "fedavg (2 rounds)" in rows and not any("7 rounds" in label for label in rows)


def test_centralised_reference_is_a_row_that_never_competes():
    # Prepare: a centralised run whose accuracy beats every other method
    central = one_shot_results(0, {"breastmnist": 0.1, "bloodmnist": 0.1})
    central |= {"strategy": "centralised", "merge": None, "communication": {}}
    central["versions"] = [
        version(
            "centralised", "reference", {"breastmnist": 0.99, "bloodmnist": 0.99}, label="centralised (pooled data)"
        )
    ]
    runs = [
        Run(Path("a"), one_shot_results(0, {"breastmnist": 0.6, "bloodmnist": 0.4})),
        Run(Path("b"), fedavg_results(0, [{"breastmnist": 0.5, "bloodmnist": 0.3}])),
        Run(Path("c"), central),
    ]
    # Execute
    comparison = compare_runs(runs)
    # Assert
    row = rows_by_label(comparison)["centralised (pooled data)"]
    assert row.reference and row.stats["mean/acc"].mean == pytest.approx(0.99)
    assert "mean/acc" not in row.best and "mean/acc" in rows_by_label(comparison)["task_arithmetic"].best


def test_the_same_model_in_two_runs_of_one_seed_counts_once_and_medforge_baselines_are_named():
    # Prepare: a one_shot and a medforge run of seed 0 share the hospitals' adapters; medforge adds a baseline
    one_shot = one_shot_results(0, {"breastmnist": 0.6, "bloodmnist": 0.4})
    medforge = one_shot_results(0, {"breastmnist": 0.5, "bloodmnist": 0.5}) | {
        "strategy": "medforge",
        "merge": "medforge",
    }
    runs = [Run(Path("a"), one_shot), Run(Path("b"), medforge)]
    # Execute
    rows = rows_by_label(compare_runs(runs))
    # Assert
    assert rows[HOSPITAL_REFERENCE].stats["breastmnist/acc"].n == 1
    assert rows["task_arithmetic"].stats["breastmnist/acc"].mean == pytest.approx(0.6)
    assert rows["task_arithmetic (medforge baseline)"].stats["breastmnist/acc"].mean == pytest.approx(0.5)
