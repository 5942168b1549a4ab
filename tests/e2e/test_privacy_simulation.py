"""A DP FedAvg simulation on Ray: the hospitals' ledgers live in Flower's node state across rounds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fl_app.server.results import read_results
from tests.conftest import REPO, TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


def test_dp_fedavg_composes_epsilon_over_rounds_within_the_target(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(REPO / "scripts" / "run.py"),
        f"hydra.run.dir={run_dir}",
        *TINY,
        f"data.root={tmp_path / 'no-medmnist'}",
        "train.local_epochs=1",
        "strategy=fedavg",
        "strategy.rounds=2",
        "privacy=dp",
        "privacy.epsilon=3",
    ]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    results = read_results(run_dir)
    privacy = results["privacy"]
    assert results["status"] == "completed" and privacy["enabled"] and privacy["target_epsilon"] == 3.0
    assert sorted(privacy["per_hospital"]) == ["0", "1", "2"]
    for hospital in privacy["per_hospital"].values():
        assert hospital["releases"] == 3  # the noised count, then two rounds: the ledger survived between messages
        assert 2.5 < hospital["epsilon"] <= 3.0 and hospital["consistent"]
    first_round = results["train_metrics"]["1"]
    assert all(m["dp-epsilon"] < privacy["per_hospital"][h]["epsilon"] for h, m in first_round.items())
    for metrics in first_round.values():  # under DP nothing unaccounted leaves: no training loss, no timing
        assert "train-loss" not in metrics and "step-seconds" not in metrics
