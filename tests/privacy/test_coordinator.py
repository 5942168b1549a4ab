"""DP that holds against the coordinator (issue 29): what the server sends or knows cannot weaken a
hospital's guarantee. Each test names the defect it pins."""

from __future__ import annotations

import json

import pytest
import torch

from fl_app import hospital_steps as steps
from fl_app.config import hospital_payload
from fl_app.data.demo_sites import write_demo_npz
from fl_app.hospital_steps import hospital_for, simulated_hospital
from fl_app.privacy.dp_sgd import released_parameters
from fl_app.privacy.ledger import Ledger
from fl_app.privacy.settings import default_delta

CALIBRATION = {"ipc": 1, "iterations": 3, "lr": 0.01, "batch_real": 8, "init": "noise", "augment": False}


def payload(tiny_experiment, *overrides: str) -> dict:
    return json.loads(hospital_payload(tiny_experiment("privacy=dp", "train.local_epochs=1", *overrides)))


def released_after_training(experiment: dict, node_config=None) -> torch.Tensor:
    hospital = simulated_hospital(experiment, 1, 3, node_config)
    hospital.train(None, 1, None, Ledger())
    return torch.cat(
        [p.detach().flatten().clone() for p in released_parameters(hospital.model.peft, hospital.task).values()]
    )


# defect 1: the noise and the batches came from a seed the server knows ---------------------------------


def test_two_dp_trainings_with_identical_server_visible_inputs_differ_in_their_noise(tiny_experiment):
    experiment = payload(tiny_experiment)  # what the server sends: seed, hospital, round, start adapter

    first, replica = released_after_training(experiment), released_after_training(experiment)

    assert not torch.allclose(first, replica)  # the server, replaying its own inputs, cannot reproduce the step


def test_seeded_noise_is_an_explicit_simulation_opt_in(tiny_experiment):
    experiment = payload(tiny_experiment, "privacy.simulation.seeded_noise=true")

    assert torch.equal(released_after_training(experiment), released_after_training(experiment))


def site_node(tmp_path, epsilon: float = 3.0, **extra) -> dict:
    data = write_demo_npz(tmp_path / "site" / "breast.npz", "breastmnist", n_train=40, n_eval=12)
    return {
        "hospital-id": 0,
        "task": "breastmnist",
        "data-path": str(data),
        "privacy-epsilon": epsilon,
        "privacy-ledger": str(tmp_path / "ledger"),
        **extra,
    }


def test_a_deployed_site_refuses_seeded_noise(tiny_experiment, tmp_path):
    experiment = payload(tiny_experiment, "privacy.epsilon=3", "privacy.simulation.seeded_noise=true")
    node = site_node(tmp_path)
    hospital = hospital_for(experiment, node)

    with pytest.raises(ValueError, match="seeded_noise"):
        hospital.train(None, 1, None, steps.open_ledger(hospital, experiment, node, {}))


# defect 2: the server chose the δ the site's budget is checked at ---------------------------------------


def test_a_site_refuses_a_request_that_carries_a_looser_delta(tiny_experiment, tmp_path):
    experiment = payload(tiny_experiment, "privacy.epsilon=3", "privacy.delta=0.5")
    node = site_node(tmp_path)
    hospital = hospital_for(experiment, node)

    with pytest.raises(ValueError, match="δ"):
        hospital.train(None, 1, None, steps.open_ledger(hospital, experiment, node, {}))


def test_a_site_accounts_at_its_own_delta_and_a_stricter_request_is_honoured(tiny_experiment, tmp_path):
    node = site_node(tmp_path, **{"privacy-delta": 1e-3})
    loose = payload(tiny_experiment, "privacy.epsilon=3")
    strict = payload(tiny_experiment, "privacy.epsilon=3", "privacy.delta=1e-5")
    hospital = hospital_for(loose, node)
    ledger = steps.open_ledger(hospital, loose, node, {})
    assert dict(hospital.train(None, 1, None, ledger)["metrics"])["dp-delta"] == 1e-3

    node = site_node(tmp_path / "other", **{"privacy-delta": 1e-3})
    hospital = hospital_for(strict, node)
    assert (
        dict(hospital.train(None, 1, None, steps.open_ledger(hospital, strict, node, {}))["metrics"])["dp-delta"]
        == 1e-5
    )


def test_a_simulated_hospital_refuses_a_delta_that_lets_a_record_out_in_the_clear(tiny_experiment):
    hospital = simulated_hospital(payload(tiny_experiment, "privacy.delta=0.5"), 1, 3)

    with pytest.raises(ValueError, match="δ"):
        hospital.train(None, 1, None, Ledger())


# defect 3: the server could reset the site's ledger (new job name, new run) ------------------------------


def test_a_second_run_and_a_second_job_on_the_same_data_find_the_spent_budget(tiny_experiment, tmp_path):
    node = site_node(tmp_path, epsilon=3.0)
    first = payload(tiny_experiment, "privacy.epsilon=3")
    hospital = hospital_for(first, node)
    hospital.train(None, 1, None, steps.open_ledger(hospital, first, node, {}))  # run 1 spends the whole budget

    for job in ("", "another-job"):  # a new run (fresh context state), with or without a new job name
        experiment = {**payload(tiny_experiment, "privacy.epsilon=3"), "job": job}
        hospital = hospital_for(experiment, node)
        ledger = steps.open_ledger(hospital, experiment, node, {})
        assert len(ledger.history) >= 1
        with pytest.raises(ValueError, match="privacy-epsilon"):
            hospital.train(None, 1, None, ledger)


def test_the_site_ledger_is_on_disk_before_the_reply_leaves(tiny_experiment, tmp_path):
    node = site_node(tmp_path, epsilon=8.0)
    experiment = payload(tiny_experiment, "privacy.epsilon=3")
    hospital = hospital_for(experiment, node)
    ledger = steps.open_ledger(hospital, experiment, node, {})

    hospital.train(None, 1, None, ledger)

    on_disk = steps.open_ledger(hospital_for(experiment, node), experiment, node, {})
    assert on_disk.history == ledger.history and len(on_disk.history) >= 1
    assert list((tmp_path / "ledger").glob("*.tmp")) == []  # written atomically: no half-written file left


def test_simulated_sweeps_keep_per_job_budgets(tiny_experiment):
    state: dict = {}
    experiment = {**payload(tiny_experiment, "privacy.epsilon=3"), "job": "0_seed=0"}
    hospital = simulated_hospital(experiment, 1, 3)
    ledger = steps.open_ledger(hospital, experiment, {"partition-id": 1, "num-partitions": 3}, state)
    ledger.history.append((1.0, 0.5, 10))
    steps.keep_ledger(ledger, experiment, state)
    other = steps.open_ledger(
        hospital, {**experiment, "job": "1_seed=1"}, {"partition-id": 1, "num-partitions": 3}, state
    )
    again = steps.open_ledger(hospital, experiment, {"partition-id": 1, "num-partitions": 3}, state)

    assert other.history == [] and again.history == [(1.0, 0.5, 10)]


# defect 4: released in the clear under DP ---------------------------------------------------------------


def test_a_dp_reply_carries_no_training_loss_timing_or_exact_count(tiny_experiment):
    hospital = simulated_hospital(
        payload(tiny_experiment, "privacy.distill.enabled=true", "privacy.distill.epsilon=2", "privacy.epsilon=3"), 1, 3
    )
    ledger = Ledger()

    reply = hospital.train(None, 1, CALIBRATION, ledger)

    metrics, info = dict(reply["metrics"]), dict(reply["calibration-info"])
    assert "train-loss" not in metrics and "seconds" not in info
    assert not any("seconds" in key for key in metrics)
    n_released = reply["hospital"]["n-train"]
    assert metrics["num-examples"] == n_released == ledger.count  # the noised count, released once
    assert metrics["dp-delta"] == pytest.approx(default_delta(n_released))  # δ follows the released count, not n
    assert metrics["dp-epsilon"] <= 3 + 2 + 1e-9


def test_the_budget_check_has_no_slack():
    from fl_app.privacy.accounting import Plan, check_budget, epsilon_spent
    from fl_app.privacy.settings import NoiseTarget

    release = Plan(1.0, 0.1, 50, 1e-4)
    spent = epsilon_spent([release.mechanism], 1e-4)

    with pytest.raises(ValueError, match="beyond"):
        check_budget([], release, NoiseTarget(epsilon=spent - 0.015), "a release")


# defect 5: BatchNorm under DP ------------------------------------------------------------------------------


def test_batchnorm_in_any_backbone_is_frozen_under_dp(tiny_experiment):
    experiment = payload(tiny_experiment, "model.init_seed=29")  # its own cached model: patched below
    hospital = simulated_hospital(experiment, 1, 3)
    hospital.model.use_adapter(hospital.lora)
    backbone = hospital.model.peft.base_model.model.backbone
    projection = backbone.embeddings.patch_embeddings.projection
    norm = torch.nn.BatchNorm2d(projection.out_channels).requires_grad_(False)  # frozen, as build_backbone leaves it
    backbone.add_module("extra_norm", norm)  # a backbone with batch norm, as hub CNNs have
    projection.register_forward_hook(lambda module, args, output: norm(output))
    modes = []
    norm.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    before = norm.running_mean.clone()

    hospital.train(None, 1, None, Ledger())

    assert modes and not any(modes)  # every forward pass of DP training ran it in eval mode
    assert torch.equal(norm.running_mean, before)


def test_the_data_fingerprint_follows_the_content_not_the_name(tmp_path):
    from fl_app.privacy.ledger import file_fingerprint

    first = write_demo_npz(tmp_path / "a.npz", "breastmnist", n_train=20, n_eval=5)
    copy = tmp_path / "b.npz"
    copy.write_bytes(first.read_bytes())
    other = write_demo_npz(tmp_path / "c.npz", "breastmnist", n_train=20, n_eval=5, seed=1)

    assert file_fingerprint(first) == file_fingerprint(copy) != file_fingerprint(other)
