"""Re-merging a run (fl_app/remerge/run.py): names it may and may not replace, refused before anything is written."""

from __future__ import annotations

import json

import pytest

from fl_app.remerge import MergeRequest, StoredRun, remerge


def _stored(tmp_path, versions) -> StoredRun:
    results = {"status": "completed", "versions": versions}
    return StoredRun(tmp_path, json.dumps(results), results, experiment=None, hospitals=[])


def _request(name: str) -> MergeRequest:
    return MergeRequest("task_arithmetic", {}, "uniform", 1.0, None, name, "task_arithmetic")


def test_the_runs_own_versions_are_never_replaced_even_with_force(tmp_path):
    run = _stored(tmp_path, [{"name": "merged", "kind": "merged"}])

    with pytest.raises(ValueError, match="one of the run's own versions; remerge never replaces those"):
        remerge(run, [_request("merged")], force=True)


def test_an_existing_remerge_version_needs_force(tmp_path):
    run = _stored(tmp_path, [{"name": "remerge-x", "kind": "merged", "remerge": {}}])

    with pytest.raises(ValueError, match="already exists .* pass --force"):
        remerge(run, [_request("remerge-x")])
