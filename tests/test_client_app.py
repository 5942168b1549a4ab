"""The ClientApp's per-experiment state in Flower's per-node context."""

from __future__ import annotations

from flwr.app import ConfigRecord

from fl_app.client_app import _ledger, _ledger_key
from fl_app.privacy.ledger import LEDGER_KEY


def test_a_run_of_its_own_keeps_its_ledger_where_earlier_versions_did():
    assert _ledger_key({"job": ""}) == LEDGER_KEY
    assert _ledger_key({}) == LEDGER_KEY


def test_the_jobs_of_a_sweep_keep_separate_privacy_ledgers():
    first, second = _ledger_key({"job": "0_seed=0"}), _ledger_key({"job": "1_seed=1"})

    assert first != second and LEDGER_KEY not in (first, second)


def test_a_jobs_ledger_starts_empty_even_when_another_job_spent_budget():
    from types import SimpleNamespace

    from fl_app.privacy.ledger import Ledger

    spent = Ledger([(1.0, 0.05, 100)])  # (noise multiplier, sampling rate, steps) of job 0's training
    context = SimpleNamespace(state={_ledger_key({"job": "0"}): ConfigRecord({"history": spent.to_json()})})

    assert _ledger(context, _ledger_key({"job": "0"})).history == spent.history
    assert _ledger(context, _ledger_key({"job": "1"})).history == []
