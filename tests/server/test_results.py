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
