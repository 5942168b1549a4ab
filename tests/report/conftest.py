"""Fixtures for the report tests: a synthetic 2 strategies x 2 seeds sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_app.report import Run
from tests.report.synthetic_results import fedavg_results, one_shot_results


@pytest.fixture
def sweep_runs() -> list[Run]:
    """2 strategies x 2 seeds, numbers chosen so the expected table is easy to write down."""
    return [
        Run(Path("sweep/0"), one_shot_results(0, {"breastmnist": 0.6, "bloodmnist": 0.4}, wall=40.0)),
        Run(Path("sweep/1"), one_shot_results(1, {"breastmnist": 0.8, "bloodmnist": 0.6}, wall=60.0)),
        Run(
            Path("sweep/2"),
            fedavg_results(0, [{"breastmnist": 0.5, "bloodmnist": 0.5}, {"breastmnist": 0.7, "bloodmnist": 0.7}]),
        ),
        Run(
            Path("sweep/3"),
            fedavg_results(1, [{"breastmnist": 0.5, "bloodmnist": 0.3}, {"breastmnist": 0.9, "bloodmnist": 0.7}]),
        ),
    ]
