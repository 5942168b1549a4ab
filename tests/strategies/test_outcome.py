"""Versions made by a merge (strategies/outcome.py): their provenance and truncation record."""

from __future__ import annotations

import pytest

from strategies.merging import MergeResult
from strategies.outcome import merged_version


def test_a_merged_version_records_what_the_rank_cap_cost_per_module():
    result = MergeResult(
        state={}, rank=4, lora_alpha=4, relative_error=0.3, exact=False, module_errors={"b": 0.3, "a": 0.005}
    )

    details = merged_version("merged", result, [0, 1], [0.5, 0.5]).details

    assert details["relative_error"] == 0.3
    assert details["truncation"] == {
        "max": 0.3,
        "mean": pytest.approx(0.1525),
        "modules_over_1pct": 1,
        "per_module": {"a": 0.005, "b": 0.3},
    }
