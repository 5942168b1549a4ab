"""The results folder (fl_app/server/results.py): strict JSON, written atomically."""

from __future__ import annotations

import json
import math

from fl_app.server.results import RunResults, read_results


def test_results_are_strict_json_and_survive_a_failure(tmp_path):
    results = RunResults(tmp_path, {"strategy": "one_shot"})
    results.set(versions=[{"name": "merged", "mean_auc": math.nan}])

    results.finish("failed", error="boom")

    data = read_results(tmp_path)
    assert data["status"] == "failed" and data["error"] == "boom"
    assert data["versions"][0]["mean_auc"] is None
    assert not list(tmp_path.glob(".results.json.*"))  # no temp files left behind
    json.loads((tmp_path / "results.json").read_text())


def test_a_dropped_node_is_named_from_what_the_server_knows(tmp_path):
    from fl_app.failures import TIMEOUT, UNAVAILABLE, Failure

    results = RunResults(tmp_path, {"strategy": "fedavg"}, hospital_of_node={501: 0})
    unavailable = "Error: Node Unavailable - The destination node failed to report a heartbeat"

    results.record_failures([Failure(None, "train", unavailable, node_id=501, round=2, cause=UNAVAILABLE)])
    results.record_failures([Failure(None, "train", "timeout: no reply", node_id=777, round=1, cause=TIMEOUT)])
    results.learn_nodes({777: 2})  # node 777 named itself later (its evaluation reply)

    failures = read_results(tmp_path)["failures"]
    assert [(f["node_id"], f["hospital_id"], f["reason"]) for f in failures] == [
        (501, 0, "unavailable"),
        (777, 2, "timeout"),
    ]
