"""The real-data multi-task preset end to end: real MedMNIST files, the pretrained EfficientNet-Lite0,
a real Flower simulation on Ray (tiny caps), then the centralised reference on the same data."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict

from fl_app.config import compose_experiment
from fl_app.hospital_steps import task_outputs
from fl_app.model import MedForgeClassifier, build_backbone
from fl_app.server.results import read_results
from fl_app.simulation import run_simulation
from tests.conftest import MEDMNIST_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

REAL_FLAGS = ["breastmnist", "pneumoniamnist", "retinamnist"]
TINY_REAL = ["data.max_train=24", "data.max_eval=24", "train.local_epochs=1", "model.image_size=32", "lora.r=2"]


@pytest.fixture(scope="module")
def real_root():
    if not all((MEDMNIST_ROOT / f"{flag}.npz").exists() for flag in REAL_FLAGS):
        pytest.fail(f"the real MedMNIST files {REAL_FLAGS} are expected under {MEDMNIST_ROOT} (see its README)")
    return MEDMNIST_ROOT


@pytest.fixture(scope="module")
def real_one_shot(tmp_path_factory, real_root):
    cfg = compose_experiment(["experiment=real_multitask", f"data.root={real_root}", *TINY_REAL])
    return cfg, run_simulation(cfg, tmp_path_factory.mktemp("real") / "one_shot", quiet=True)


def test_real_multitask_preset_runs_on_the_real_files_with_the_pretrained_backbone(real_one_shot):
    cfg, run_dir = real_one_shot

    results = read_results(run_dir)

    assert results["status"] == "completed" and results["data_source"] == "medmnist"
    assert [h["task"] for h in results["hospitals"]] == REAL_FLAGS
    assert results["config"]["model"]["name"] == "efficientnet_lite0"
    assert [v["name"] for v in results["versions"]] == ["hospital-0", "hospital-1", "hospital-2", "merged"]
    merged = results["versions"][-1]
    assert set(merged["per_task"]) == set(REAL_FLAGS) and 0.0 <= merged["mean_auc"] <= 1.0


def test_merged_conv_adapter_loads_with_peft_and_is_the_exact_weighted_sum(real_one_shot):
    cfg, run_dir = real_one_shot
    classifier = MedForgeClassifier(build_backbone(cfg.model), task_outputs({"data": {"flags": REAL_FLAGS}}))

    merged = PeftModel.from_pretrained(classifier, run_dir / "adapters" / "merged")

    state = get_peft_model_state_dict(merged)
    module = "base_model.model.backbone.conv_head"
    assert state[f"{module}.lora_A.weight"].dim() == 4  # a Conv2d LoRA, as PEFT stores it
    delta = state[f"{module}.lora_B.weight"].flatten(1) @ state[f"{module}.lora_A.weight"].flatten(1)
    weights = read_results(run_dir)["versions"][-1]["weights"]
    expected = torch.zeros_like(delta)
    for hospital_id, weight in weights.items():
        hospital = PeftModel.from_pretrained(
            MedForgeClassifier(build_backbone(cfg.model), task_outputs({"data": {"flags": REAL_FLAGS}})),
            run_dir / "adapters" / f"hospital-{hospital_id}",
        )
        own = get_peft_model_state_dict(hospital)
        scale = cfg.lora.alpha / cfg.lora.r
        expected += (
            weight * scale * own[f"{module}.lora_B.weight"].flatten(1) @ own[f"{module}.lora_A.weight"].flatten(1)
        )
    assert torch.allclose(delta, expected, atol=1e-5, rtol=1e-4)
    assert merged(pixel_values=torch.zeros(1, 3, 32, 32), task="retinamnist").shape == (1, 5)


def test_centralised_reference_trains_one_adapter_on_the_pooled_data(tmp_path, real_root):
    cfg = compose_experiment(
        ["experiment=real_multitask", f"data.root={real_root}", "strategy=centralised", *TINY_REAL]
    )

    run_dir = run_simulation(cfg, tmp_path / "centralised", quiet=True)

    results = read_results(run_dir)
    assert results["status"] == "completed" and results["strategy"] == "centralised"
    assert [v["name"] for v in results["versions"]] == ["centralised"]
    central = results["versions"][0]
    assert central["kind"] == "reference" and central["n_train"] == {flag: 24 for flag in REAL_FLAGS}
    assert set(central["per_task"]) == set(REAL_FLAGS)
    assert results["communication"]["upload_bytes"] == 0  # nothing trained at the hospitals
    assert (run_dir / "adapters" / "centralised" / "adapter_config.json").exists()


def test_default_medforge_run_merges_every_honest_hospital(tmp_path, real_root):
    """`scripts/run.py strategy=medforge simulation.num_hospitals=3` on the default multi-task data.

    The tasks' ΔW norms differ by 20-35x; the screen once compared them across tasks and rejected
    both later arrivals (failed: NotEnoughHospitals). Hospitals are now compared within a task only.
    """
    cfg = compose_experiment(
        [
            "strategy=medforge",
            "simulation.num_hospitals=3",
            f"data.root={real_root}",
            *TINY_REAL,
            "strategy.calibration.iterations=5",
            "strategy.calibration.ipc=2",
            "strategy.search.budget=6",
        ]
    )
    results = read_results(run_simulation(cfg, tmp_path / "medforge", quiet=True))
    assert results["status"] == "completed", results.get("error")
    assert [f for f in results["failures"] if f["phase"] == "screen"] == []
    assert sorted(results["strategy_details"]["order"]) == [0, 1, 2]
    assert {a["action"] for a in results["strategy_details"]["screening"]} <= {"no_majority"}


def test_federated_medforge_searches_on_the_real_validation_splits(tmp_path, real_root):
    """`strategy=medforge_federated` (the best variant) on the real files: a real Ray simulation in
    which every hospital scores the search's candidates and returns only losses."""
    cfg = compose_experiment(
        [
            "experiment=real_multitask",
            "strategy=medforge_federated",
            f"data.root={real_root}",
            *TINY_REAL,
            "strategy.search.budget=6",
            "strategy.federated.candidates_per_round=3",
        ]
    )
    results = read_results(run_simulation(cfg, tmp_path / "federated", quiet=True))
    assert results["status"] == "completed", results.get("error")
    names = [v["name"] for v in results["versions"]]
    assert names == ["hospital-0", "hospital-1", "hospital-2", "fusion-one-shot", "task_arithmetic"]
    fusion = next(v for v in results["versions"] if v["name"] == "fusion-one-shot")
    search = fusion["search"]
    assert search["source"] == "federated" and search["evaluations"] == 6
    assert search["objective"] <= search["start_objective"]
    record = results["strategy_details"]["federated_search"]
    assert record["rounds"] == 2 and record["share"] == "adapters"
    assert results["search_traffic"]["rounds"] == 2 and results["search_traffic"]["upload_bytes"] > 0
    assert results["strategy_details"]["calibration"] == {}  # no calibration set was distilled
    assert results["profile"]["federated_search_rounds"] > 0
