"""The ClientApp's per-experiment state in Flower's per-node context: the DP ledger of a simulated hospital."""

from __future__ import annotations

import json

from flwr.app import ConfigRecord

from fl_app.config import hospital_payload
from fl_app.hospital_steps import keep_ledger, ledger_key, open_ledger, simulated_hospital
from fl_app.privacy.ledger import LEDGER_KEY, Ledger

SIMULATED = {"partition-id": 1, "num-partitions": 3}


def test_a_run_of_its_own_keeps_its_ledger_where_earlier_versions_did():
    assert ledger_key({"job": ""}) == LEDGER_KEY
    assert ledger_key({}) == LEDGER_KEY


def test_the_jobs_of_a_sweep_keep_separate_privacy_ledgers():
    first, second = ledger_key({"job": "0_seed=0"}), ledger_key({"job": "1_seed=1"})

    assert first != second and LEDGER_KEY not in (first, second)


def test_a_jobs_ledger_starts_empty_even_when_another_job_spent_budget(tiny_experiment):
    experiment = json.loads(hospital_payload(tiny_experiment("privacy=dp")))
    hospital = simulated_hospital(experiment, 1, 3)
    spent = Ledger([(1.0, 0.05, 100)], count=40)  # job 0's noised count and training
    state = {ledger_key({"job": "0"}): ConfigRecord({"history": spent.to_json()})}

    assert open_ledger(hospital, {**experiment, "job": "0"}, SIMULATED, state) == spent
    assert open_ledger(hospital, {**experiment, "job": "1"}, SIMULATED, state).history == []


def test_a_simulation_may_keep_ledgers_on_disk_like_sites(tiny_experiment, tmp_path):
    folder = tmp_path / "ledgers"
    experiment = json.loads(hospital_payload(tiny_experiment("privacy=dp", f"privacy.simulation.ledger={folder}")))
    hospital = simulated_hospital(experiment, 1, 3)
    ledger = open_ledger(hospital, experiment, SIMULATED, {})
    ledger.history.append((1.0, 0.5, 10))  # a release appended through the plain API
    keep_ledger(ledger, experiment, {})

    again = open_ledger(hospital, {**experiment, "job": "another"}, SIMULATED, {})
    assert again.history == [(1.0, 0.5, 10)] and again.run_start == 1
