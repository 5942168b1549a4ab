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

    results.record_failures([Failure(None, "train", unavailable, node_id=501, round=2, reason=UNAVAILABLE)])
    results.record_failures([Failure(None, "train", "timeout: no reply", node_id=777, round=1, reason=TIMEOUT)])
    results.learn_nodes({777: 2})  # node 777 named itself later (its evaluation reply)

    failures = read_results(tmp_path)["failures"]
    assert [(f["node_id"], f["hospital_id"], f["reason"]) for f in failures] == [
        (501, 0, "unavailable"),
        (777, 2, "timeout"),
    ]


def test_results_json_has_one_writer_and_statuses_are_named_once():
    """Only fl_app/server/results.py writes results.json; status words live in fl_app/server/status.py."""
    import re
    from pathlib import Path

    from fl_app.server import status

    root = Path(__file__).resolve().parents[2]
    sources = [p for d in ("fl_app", "strategies", "scripts") for p in (root / d).rglob("*.py")]
    words = "|".join(status.STATUSES)
    writers, literals = [], []
    for path in sources:
        text, name = path.read_text(), str(path.relative_to(root))
        other_files = ("scripts/privacy_audit.py", "fl_app/server/identities.py")  # they write their own JSON files
        if "write_json_atomic(" in text and name != "fl_app/server/results.py" and name not in other_files:
            writers.append(name)
        bare = re.search(rf"(?<!\[)[\"']({words})[\"'](?!\])", text)  # results["interrupted"] is a key, not a status
        if bare and name != "fl_app/server/status.py":
            literals.append(name)

    assert not writers, f"write results.json through fl_app.server.results.write_results: {writers}"
    assert not literals, f"use the status constants of fl_app/server/status.py: {literals}"
