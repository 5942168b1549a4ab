"""The end-of-run table (fl_app/report/summary.py) on synthetic results.json dicts."""

from __future__ import annotations

from fl_app.report.summary import MAX_TASK_COLUMNS, run_summary
from tests.report.synthetic_results import TASKS, fedavg_results, one_shot_results, version


def test_every_version_gets_a_row_with_its_means_per_task_figures_and_bytes():
    # Prepare
    results = one_shot_results(0, {TASKS[0]: 0.8, TASKS[1]: 0.6})

    # Execute
    lines = run_summary(results)

    # Assert
    header, rule, *rest = lines[1:]
    assert header.split()[:5] == ["version", "mean", "ACC", "mean", "AUC"]
    assert all(f"{t} ACC/AUC" in header for t in TASKS) and set(rule) <= {"-", " "}
    rows = {
        line.split()[0]: line.split() for line in rest if line.split()[0] in {v["name"] for v in results["versions"]}
    }
    assert set(rows) == {"hospital-0", "hospital-1", "merged"}
    assert rows["merged"][1:3] == ["0.700", "0.600"]  # mean ACC, mean AUC
    assert rows["merged"][3:5] == ["0.800/0.700", "0.600/0.500"]  # per task ACC/AUC
    assert rows["merged"][5:] == ["2.0", "KB", "200", "B"]  # two hospitals' upload, download


def test_fedavg_rounds_count_the_bytes_up_to_their_round():
    lines = run_summary(fedavg_results(0, [{TASKS[0]: 0.5, TASKS[1]: 0.5}] * 3))

    rows = {line.split()[0]: line for line in lines if line.startswith("fedavg-round-")}
    assert rows["fedavg-round-1"].split()[-4:] == ["2.0", "KB", "200", "B"]
    assert rows["fedavg-round-3"].split()[-4:] == ["6.0", "KB", "600", "B"]


def test_the_footer_says_wall_time_and_whether_the_data_were_real():
    synthetic = run_summary(one_shot_results(0, {TASKS[0]: 0.8, TASKS[1]: 0.6}, wall=12.34))
    real = run_summary({**one_shot_results(0, {TASKS[0]: 0.8, TASKS[1]: 0.6}), "data_source": "medmnist"})

    assert any(line.startswith("wall time 12.3 s") for line in synthetic)
    assert synthetic[-1].startswith("data: SYNTHETIC") and "data_source=synthetic" in synthetic[-1]
    assert real[-1].startswith("data: real (MedMNIST files)")


def test_many_tasks_show_means_only():
    tasks = [f"task{i}" for i in range(MAX_TASK_COLUMNS + 1)]
    results = {
        "strategy": "one_shot",
        "tasks": tasks,
        "versions": [version("merged", "merged", dict.fromkeys(tasks, 0.5))],
        "communication": {},
    }

    lines = run_summary(results)

    assert "ACC/AUC" not in lines[1] and any(line.startswith(f"{len(tasks)} tasks:") for line in lines)


def test_a_run_without_versions_still_summarises():
    lines = run_summary({"strategy": "fedavg", "versions": [], "data_source": None})

    assert "(no model version was evaluated)" in lines and lines[-1] == "data: unknown (data_source=None)"


def test_a_truncated_merge_says_what_its_rank_cap_cost():
    results = one_shot_results(0, {TASKS[0]: 0.8, TASKS[1]: 0.6})
    merged = next(v for v in results["versions"] if v["name"] == "merged")
    merged |= {
        "rank": 16,
        "truncation": {"max": 0.5, "mean": 0.25, "modules_over_1pct": 1, "per_module": {"a": 0.5, "b": 0.0}},
    }

    lines = run_summary(results)

    assert (
        "merged: rank 16 keeps ΔW up to a relative error of 0.250 (mean over modules; max 0.500, 1/2 modules above 1%)"
        in lines
    )
    assert not any(line.startswith("hospital-") and "rank" in line for line in lines)  # lossless versions say nothing
