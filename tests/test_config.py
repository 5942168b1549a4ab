"""Experiment composition and fail-fast validation (before any simulation starts)."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from fl_app.config import (
    compose_experiment,
    experiment_from_run_config,
    hospital_payload,
    run_config_overrides,
    save_experiment,
)
from fl_app.validation import validate_experiment


def test_default_experiment_composes_and_validates():
    cfg = compose_experiment()

    validate_experiment(cfg)
    assert cfg.strategy.name == "one_shot" and cfg.data.scenario == "multi_task"
    assert "hydra" not in cfg


@pytest.mark.parametrize(
    "group",
    [
        "strategy=fedavg",
        "data=multi_center",
        "model=pretrained model.pretrained=/x",
        "model=vit_base_random",
        "experiment=quickstart",
    ],
)
def test_config_groups_compose(group):
    cfg = compose_experiment(group.split())

    assert OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "strategy.name=fedprox",
            r"strategy='fedprox' is not valid; choose one of \['centralised', 'fedavg', 'medforge', 'one_shot'\]",
        ),
        ("data.flags=[nosuchmnist]", "nosuchmnist"),
        ("lora.target_modules=[attention_nope]", r"lora.target_modules entry 'attention_nope'.*conv_pw"),
        ("lora.r=0", "lora.r=0"),
        ("simulation.num_hospitals=200 data=multi_center", "200"),
        ("strategy.merge=nope", r"strategy.merge='nope' is not valid"),
        ("strategy.min_hospitals=5", "strategy.min_hospitals=5"),
        ("simulation.client_cpus=0.5", "simulation.client_cpus=0.5"),
        ("simulation.data_cache_size=-1", "simulation.data_cache_size=-1"),
        (
            "simulation.ray_cpus=1 simulation.client_cpus=2",
            r"simulation.ray_cpus=1 must be null \(all cores\) or a whole number >= simulation.client_cpus=2",
        ),
        pytest.param(
            "simulation.client_gpus=0.25",
            "no CUDA GPU is visible",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
        ),
    ],
)
def test_bad_configuration_fails_naming_key_value_and_choices(override, message):
    cfg = compose_experiment(override.split())

    with pytest.raises(ValueError, match=message):
        validate_experiment(cfg)


def test_run_config_knobs_become_hydra_overrides():
    run_config = {
        "strategy": "fedavg",
        "rounds": 2,
        "lora-r": 0,
        "seed": -1,
        "data-root": "",
        "overrides": "lora.alpha=4 train.lr=0.01",
    }

    assert run_config_overrides(run_config) == ["strategy=fedavg", "strategy.rounds=2", "lora.alpha=4", "train.lr=0.01"]
    cfg = experiment_from_run_config(run_config)
    assert cfg.strategy.name == "fedavg" and cfg.strategy.rounds == 2 and cfg.lora.alpha == 4


def test_resolved_config_file_round_trips(tmp_path):
    cfg = compose_experiment(["seed=7"])
    path = save_experiment(cfg, tmp_path / "config.yaml")

    loaded = experiment_from_run_config({"config-path": str(path)})

    assert loaded == cfg


def test_hospital_payload_holds_only_what_hospitals_need():
    payload = json.loads(hospital_payload(compose_experiment()))

    assert set(payload) == {
        "seed",
        "data",
        "model",
        "lora",
        "train",
        "eval",
        "fail_hospitals",
        "crash_hospitals",
        "slow_hospitals",
        "data_cache_size",
        "lora_ranks",
        "lora_alphas",
        "privacy",  # the hospital enforces it (DP-SGD, its ledger)
        "privacy_rounds",  # a target ε covers every round the hospital will be asked for
        "job",  # a sweep job's name: per-job state at the hospital (its DP ledger)
    }


def test_the_vit_base_sized_preset_validates_offline():
    cfg = compose_experiment(["model=vit_base_random"])

    validate_experiment(cfg)  # on the meta device: no weights built
    assert (
        cfg.model.preset.hidden_size,
        cfg.model.preset.num_hidden_layers,
        cfg.model.preset.patch_size,
        cfg.model.image_size,
    ) == (768, 12, 16, 224)


@pytest.mark.parametrize("strategy", ["one_shot", "medforge"])
def test_strategies_that_train_once_have_no_rounds_knob(strategy):
    # `rounds` did nothing for them; an override now fails instead of being ignored
    assert "rounds" not in compose_experiment([f"strategy={strategy}"]).strategy
    with pytest.raises(Exception, match="rounds"):
        compose_experiment([f"strategy={strategy}", "strategy.rounds=2"])


def test_the_server_app_skips_validation_only_for_the_file_that_was_validated(tmp_path):
    from fl_app.config import config_digest, validated_before

    path = tmp_path / "config.yaml"
    path.write_text("seed: 0\n")
    digest = config_digest(path)

    assert validated_before({"config-path": str(path), "validated": digest})
    assert not validated_before({"config-path": str(path), "validated": ""})  # `flwr run .` by hand
    assert not validated_before({"config-path": "", "validated": digest})
    path.write_text("seed: 1\n")  # edited after validation
    assert not validated_before({"config-path": str(path), "validated": digest})
    assert not validated_before({"config-path": str(tmp_path / "gone.yaml"), "validated": digest})
