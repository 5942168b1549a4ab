"""A finished run as remerge reads it (fl_app/remerge/stored.py)."""

from __future__ import annotations

import json

import pytest

from fl_app.remerge import load_stored_run


def test_a_run_without_hospital_adapters_is_refused_clearly(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "results.json").write_text(
        json.dumps(
            {"status": "completed", "strategy": "fedavg", "versions": [{"name": "fedavg-round-1", "kind": "fedavg"}]}
        )
    )

    with pytest.raises(ValueError, match="holds no hospital adapters .* remerge needs a one_shot run"):
        load_stored_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no results.json"):
        load_stored_run(tmp_path / "elsewhere")
