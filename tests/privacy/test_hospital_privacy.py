"""A hospital under DP: ε in its reply, a ledger across rounds, refusals at the hospital."""

from __future__ import annotations

import json

import pytest

from fl_app.calibration import decode_calibration
from fl_app.config import hospital_payload
from fl_app.hospital_steps import simulated_hospital
from fl_app.privacy.ledger import Ledger
from fl_app.privacy.settings import default_delta
from fl_app.privacy.summary import privacy_summary

CALIBRATION = {"ipc": 1, "iterations": 3, "lr": 0.01, "batch_real": 8, "init": "noise", "augment": False}


def private_hospital(tiny_experiment, *overrides: str):
    cfg = tiny_experiment("privacy=dp", "train.local_epochs=1", *overrides)
    return simulated_hospital(json.loads(hospital_payload(cfg)), 1, 3)


def test_fedavg_rounds_compose_in_the_ledger_and_a_round_beyond_the_plan_is_refused(tiny_experiment):
    hospital = private_hospital(tiny_experiment, "strategy=fedavg", "strategy.rounds=2", "privacy.epsilon=3")
    ledger = Ledger()

    first = dict(hospital.train(None, 1, None, ledger)["metrics"])
    second = dict(hospital.train(None, 2, None, ledger)["metrics"])

    assert first["dp-releases"] == 2 and second["dp-releases"] == 3  # the noised count, then one per round
    assert first["dp-epsilon"] < second["dp-epsilon"] <= 3.0
    assert second["dp-steps"] == 2 * first["dp-steps"]
    assert Ledger.from_json(ledger.to_json()) == ledger
    with pytest.raises(ValueError, match="beyond this hospital's budget"):
        hospital.train(None, 3, None, ledger)


def test_one_shot_spends_its_whole_budget_in_one_release(tiny_experiment):
    metrics = dict(private_hospital(tiny_experiment, "privacy.epsilon=1").train(None, 1, None, Ledger())["metrics"])

    assert 0.9 < metrics["dp-epsilon"] <= 1.0 and metrics["dp-releases"] == 2  # the count and the training
    assert metrics["dp-delta"] == pytest.approx(default_delta(metrics["num-examples"]))  # of the released count


def test_a_calibration_set_is_never_made_without_dp_distillation(tiny_experiment):
    hospital = private_hospital(tiny_experiment)

    with pytest.raises(ValueError, match="privacy.distill.enabled=false"):
        hospital.train(None, 1, CALIBRATION, Ledger())


def test_a_dp_calibration_set_adds_its_epsilon_to_the_hospitals_total(tiny_experiment):
    hospital = private_hospital(tiny_experiment, "privacy.distill.enabled=true", "privacy.distill.epsilon=2")
    ledger = Ledger()

    reply = hospital.train(None, 1, CALIBRATION, ledger)
    metrics = dict(reply["metrics"])

    calibration = decode_calibration(reply)
    assert 1.9 < calibration.epsilon <= 2.0 and metrics["dp-epsilon-distill"] == calibration.epsilon
    assert metrics["dp-epsilon"] > metrics["dp-epsilon-train"]  # composed, and below the plain sum
    assert metrics["dp-epsilon"] < metrics["dp-epsilon-train"] + calibration.epsilon
    assert len(ledger.history) == 3  # the count, training, distillation


def test_the_server_flags_a_claimed_epsilon_its_noise_settings_do_not_give(tiny_experiment):
    metrics = dict(private_hospital(tiny_experiment).train(None, 1, None, Ledger())["metrics"])
    honest = privacy_summary({"1": {"1": metrics}}, {"enabled": True, "epsilon": 8.0})
    lying = privacy_summary({"1": {"1": {**metrics, "dp-epsilon-train": 0.1, "dp-epsilon": 0.1}}}, {"enabled": True})

    assert honest["per_hospital"]["1"]["consistent"] and honest["all_consistent"]
    assert honest["max_epsilon"] == metrics["dp-epsilon"]
    assert not lying["per_hospital"]["1"]["consistent"] and not lying["all_consistent"]


def site_hospital(tiny_experiment, site_epsilon: float, *overrides: str):
    cfg = tiny_experiment("train.local_epochs=1", *overrides)
    return simulated_hospital(json.loads(hospital_payload(cfg)), 1, 3, {"privacy-epsilon": site_epsilon})


def test_a_site_with_its_own_budget_refuses_to_train_without_dp(tiny_experiment):
    with pytest.raises(ValueError, match="privacy-epsilon=3.*without differential privacy; the hospital refuses"):
        site_hospital(tiny_experiment, 3.0).train(None, 1, None, Ledger())


def test_a_site_refuses_a_looser_epsilon_than_its_own_and_accepts_a_tighter_one(tiny_experiment):
    with pytest.raises(ValueError, match="beyond this hospital's budget the node config's privacy-epsilon=3.0"):
        site_hospital(tiny_experiment, 3.0, "privacy=dp", "privacy.epsilon=8").train(None, 1, None, Ledger())

    metrics = dict(
        site_hospital(tiny_experiment, 8.0, "privacy=dp", "privacy.epsilon=3").train(None, 1, None, Ledger())["metrics"]
    )
    assert metrics["dp-epsilon"] <= 3.0
