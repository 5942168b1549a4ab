"""Every preset in conf/experiment composes with Hydra and validates (pretrained_gpu: fails clearly here)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import constants as hf_constants

from fl_app.config import CONF_DIR, compose_experiment
from fl_app.validation import validate_experiment

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
NEEDS_GPU_AND_HUB = {"pretrained_gpu"}


def test_the_issue_presets_exist():
    assert {"quickstart", "medforge_multitask", "multicenter_dirichlet", "pretrained_gpu"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_header_says_how_to_run_it(preset):
    text = (CONF_DIR / "experiment" / f"{preset}.yaml").read_text()

    assert text.startswith("# @package _global_\n#")
    assert f"experiment={preset}" in text


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - NEEDS_GPU_AND_HUB))
def test_offline_presets_compose_and_validate(preset):
    cfg = compose_experiment([f"experiment={preset}"])

    validate_experiment(cfg)


def test_medforge_multitask_is_five_tasks_one_per_hospital():
    cfg = compose_experiment(["experiment=medforge_multitask"])

    assert list(cfg.data.flags) == ["breastmnist", "pneumoniamnist", "dermamnist", "bloodmnist", "pathmnist"]
    assert cfg.simulation.num_hospitals == 5 and cfg.data.scenario == "multi_task"
    assert cfg.strategy.name == "medforge" and cfg.lora.r == 16 and cfg.lora.alpha == 16


def test_multicenter_dirichlet_splits_one_dataset_over_eight_hospitals():
    cfg = compose_experiment(["experiment=multicenter_dirichlet"])

    assert cfg.data.scenario == "multi_center" and len(cfg.data.flags) == 1
    assert cfg.data.partition == "dirichlet" and cfg.simulation.num_hospitals >= 8


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_pretrained_gpu_composes_and_fails_clearly_without_a_gpu(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = compose_experiment(["experiment=pretrained_gpu"])
    assert cfg.model.pretrained == "google/vit-base-patch16-224-in21k" and cfg.data.size == 224
    assert cfg.simulation.client_gpus == 0.25

    with pytest.raises(
        ValueError, match=r"simulation.client_gpus=0.25 but no CUDA GPU is visible here; use simulation.client_gpus=0"
    ):
        validate_experiment(cfg)


def test_gpus_on_other_nodes_of_a_ray_cluster_pass_validation_here(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # Ray, not this machine, places the hospitals

    validate_experiment(compose_experiment(["simulation.client_gpus=0.25"]))


def test_pretrained_gpu_fails_clearly_when_the_hub_cannot_be_reached(monkeypatch):
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    cfg = compose_experiment(
        ["experiment=pretrained_gpu", "simulation.client_gpus=0", "model.pretrained=medforge-test/not-cached"]
    )

    with pytest.raises(
        RuntimeError,
        match=r"model.pretrained='medforge-test/not-cached': it is not in the Hugging Face cache .* cannot be reached .*save_pretrained",
    ):
        validate_experiment(cfg)


# The sweep axes the README lists: each value composes and validates like a sweep job would.
@pytest.mark.parametrize(
    "overrides",
    [
        "strategy.merge=ties",
        "strategy.merge=knots",
        "lora.r=16",
        "simulation.num_hospitals=6",
        "experiment=multicenter_dirichlet data.dirichlet_alpha=0.1",
        "experiment=multicenter_dirichlet data.dirichlet_alpha=100",
    ],
)
def test_readme_sweep_axes_compose_and_validate(overrides):
    validate_experiment(compose_experiment(overrides.split()))
