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
