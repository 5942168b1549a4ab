"""Credit (fl_app/forge/credit.py): leave-one-out drops per task on a tiny run, equal to what withdraw records."""

from __future__ import annotations

import json

import pytest

from fl_app.forge.credit import credit_table, leave_one_out
from fl_app.forge.withdraw import withdraw
from fl_app.remerge import load_stored_run


def test_credit_is_the_metric_drop_of_each_withdrawal(tiny_run):
    entry, credits = leave_one_out(load_stored_run(tiny_run), "merged")

    assert [c.hospital for c in credits] == [0, 1, 2]
    withdraw(tiny_run, 2, "merged")
    without = json.loads((tiny_run / "results.json").read_text())["versions"][-1]
    for metric in ("acc", "auc"):
        want = entry["per_task"]["breastmnist"][metric] - without["per_task"]["breastmnist"][metric]
        assert credits[2].per_task["breastmnist"][metric] == pytest.approx(want, abs=1e-9)
    table = credit_table("merged", entry, credits)
    assert table[1].split()[:4] == ["hospital", "task", "n_train", "coef"]
    assert len(table) == 2 + 3


def test_shapley_values_by_permutation_sampling_add_up_to_the_version_over_chance(tiny_run):
    from fl_app.forge.credit import shapley, shapley_table

    run = load_stored_run(tiny_run)
    entry = next(v for v in run.results["versions"] if v["name"] == "merged")

    values, coalitions = shapley(run, "merged", permutations=8, seed=1)

    assert coalitions <= 2**3 - 2  # every proper non-empty coalition at most once
    for metric, chance in (("acc", 0.5), ("auc", 0.5)):  # breastmnist: two classes
        total = sum(values[h]["breastmnist"][metric] for h in (0, 1, 2))
        assert total == pytest.approx(entry["per_task"]["breastmnist"][metric] - chance, abs=1e-9)
    assert len(shapley_table("merged", values, 8, coalitions)) == 2 + 3
