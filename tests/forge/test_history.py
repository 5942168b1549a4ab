"""log and show (fl_app/forge/history.py): one line per version with parent, change, method, metrics."""

from __future__ import annotations

import pytest

from fl_app.forge.history import log_lines, show_lines

RESULTS = {
    "versions": [
        {
            "name": "hospital-0",
            "kind": "hospital",
            "hospital": 0,
            "task": "a",
            "r": 8,
            "mean_acc": 0.5,
            "mean_auc": 0.6,
        },
        {
            "name": "fusion-v1",
            "kind": "progressive",
            "method": "medforge_fusion",
            "step": 1,
            "hospital": 0,
            "coefficients": [1.0],
        },
        {
            "name": "fusion-v2",
            "kind": "progressive",
            "method": "medforge_fusion",
            "step": 2,
            "hospital": 1,
            "coefficients": [0.8, 0.4],
        },
        {
            "name": "merged",
            "kind": "merged",
            "method": "task_arithmetic",
            "weights": {"0": 0.25, "1": 0.75},
            "mean_acc": 0.7,
            "mean_auc": 0.8,
            "per_task": {"a": {"acc": 0.7, "auc": 0.8, "n_test": 10, "hospitals": 1}},
        },
        {
            "name": "merged-without-1",
            "kind": "merged",
            "method": "task_arithmetic",
            "parent": "merged",
            "withdrawn": [1],
            "weights": {"0": 1.0},
        },
        {"name": "fedavg-round-2", "kind": "fedavg", "round": 2},
        {"name": "hospital-0.2", "kind": "commit", "hospital": 0, "task": "a", "r": 4, "replaces": "hospital-0"},
    ]
}


def test_log_has_one_line_per_version_with_parent_change_and_method():
    lines = log_lines(RESULTS)

    cells = [line.split() for line in lines]
    assert [c[0] for c in cells] == [v["name"] for v in RESULTS["versions"]]
    assert cells[0][2:4] == ["-", "+0"] and "own adapter r=8 (a)" in lines[0]
    assert cells[2][2:4] == ["fusion-v1", "+1"] and "medforge_fusion c[0.8 0.4]" in lines[2]
    assert (
        cells[3][3] == "+0,1" and "ACC 0.700 AUC 0.800" in lines[3] and "task_arithmetic w[0=0.25 1=0.75]" in lines[3]
    )
    assert cells[4][2:4] == ["merged", "-1"]
    assert cells[5][2] == "fedavg-round-1"
    assert cells[6][2:4] == ["hospital-0", "~0"] and "own adapter r=4 (a)" in lines[6]


def test_show_prints_one_version_in_full_or_names_the_versions():
    lines = show_lines(RESULTS, "merged")

    assert lines[0].startswith("version   merged") and any(line.startswith("task      a: ACC 0.700") for line in lines)
    with pytest.raises(ValueError, match=r"no version 'v7' in the run; its versions are \['hospital-0'"):
        show_lines(RESULTS, "v7")
