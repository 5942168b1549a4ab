"""The MedForge strategy end to end in one process (real hospital steps, a stand-in Grid)."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity
from peft import PeftModel

from fl_app.config import compose_experiment
from fl_app.data import task_info
from fl_app.model.backbone import build_backbone
from fl_app.model.classifier import MedForgeClassifier
from fl_app.model.mixture import load_mixture
from fl_app.server.experiment import run_experiment_on_grid
from fl_app.training import to_pixels
from fl_app.validation import validate_experiment
from tests.conftest import TINY
from tests.medforge.local_grid import LocalGrid

FAST = [
    *TINY,
    "data.root=/nonexistent/medforge-test",
    "strategy=medforge",
    "train.local_epochs=1",
    "strategy.calibration.iterations=5",
    "strategy.calibration.ipc=2",
    "strategy.search.budget=8",
]


@pytest.fixture(scope="module")
def flower_identity():
    saved = {f: getattr(TaskIdentity, f) for f in ("_run_id", "_node_id", "_task_id")}
    for field in saved:  # Flower messages outside a run need an identity
        setattr(TaskIdentity, field, 1)
    yield
    for field, value in saved.items():
        setattr(TaskIdentity, field, value)


def run(tmp_path_factory, grid, *overrides):
    cfg = compose_experiment([*FAST, *overrides])
    validate_experiment(cfg)
    folder = tmp_path_factory.mktemp("medforge")
    return run_experiment_on_grid(grid, cfg, folder).data, folder


@pytest.fixture(scope="module")
def configured(tmp_path_factory, flower_identity):
    return run(tmp_path_factory, LocalGrid(3), "strategy.order=configured", "strategy.arrival_order=[2,0,1]")


def test_each_arrival_makes_a_version_with_provenance(configured):
    results, _ = configured
    versions = {v["name"]: v for v in results["versions"]}
    tasks = {h["id"]: h["task"] for h in results["hospitals"]}
    for method in ("fusion", "mixture"):
        for step, hospital in enumerate([2, 0, 1], start=1):
            v = versions[f"{method}-v{step}"]
            assert v["kind"] == "progressive" and v["method"] == f"medforge_{method}"
            assert v["step"] == step and v["hospital"] == hospital
            assert v["hospitals_merged"] == [2, 0, 1][:step]
            assert v["tasks_merged"] == sorted({tasks[h] for h in [2, 0, 1][:step]})
            assert sorted(v["per_task"]) == v["tasks_merged"]  # scored only on the tasks merged so far
            assert len(v["coefficients"]) == (
                2 if method == "fusion" and step > 1 else step if method == "mixture" else 1
            )
    assert results["strategy_details"]["order"] == [2, 0, 1]
    for name in ("fusion-one-shot", "mixture-one-shot", "task_arithmetic", "ties"):
        assert versions[name]["kind"] == "merged" and len(versions[name]["per_task"]) == 3


def test_the_search_never_scores_worse_than_its_start(configured):
    results, _ = configured
    searched = [v["search"] for v in results["versions"] if v.get("search")]
    assert len(searched) == 6  # v2, v3 of each method + the two one-shot merges
    assert all(s["objective"] <= s["start_objective"] for s in searched)
    assert any(s["objective"] < s["start_objective"] for s in searched)  # and it finds better than uniform 0.5


def test_a_mixture_of_one_adapter_scores_like_that_adapter(configured):
    results, _ = configured
    versions = {v["name"]: v for v in results["versions"]}
    first = versions["hospital-2"]["per_hospital"]["2"]
    assert versions["mixture-v1"]["per_hospital"]["2"] == first == versions["fusion-v1"]["per_hospital"]["2"]
    assert versions["mixture-v3"]["inference"]["forward_passes_per_image"] == 3
    assert versions["fusion-v3"]["inference"]["forward_passes_per_image"] == 1


def test_calibration_sets_are_counted_in_the_bytes_and_described(configured):
    results, _ = configured
    calibration = results["strategy_details"]["calibration"]
    assert sorted(calibration) == ["0", "1", "2"]
    for info in calibration.values():
        assert info["init"] == "noise" and not info["privacy_risk"]
        assert info["matching_loss_after"] >= 0 and info["seconds"] > 0  # the loss falls: test_distill.py
        n_outputs = task_info(info["task"]).n_outputs
        assert info["images"] <= 2 * n_outputs
    per_hospital = results["communication"]["per_hospital"]
    blood = next(h for h, info in calibration.items() if info["task"] == "bloodmnist")
    breast = next(h for h, info in calibration.items() if info["task"] == "breastmnist")
    # same adapter size; bloodmnist's calibration set is larger (RGB, 8 classes)
    assert per_hospital[blood]["upload_bytes"] - per_hospital[breast]["upload_bytes"] > 2 * 28 * 28 * 3


def test_saved_mixture_loads_with_peft_and_predicts_like_its_component(configured):
    results, folder = configured
    cfg = compose_experiment(FAST)
    tasks = {flag: task_info(flag).n_outputs for flag in cfg.data.flags}
    torch.manual_seed(0)
    images = to_pixels(torch.randint(0, 255, (4, 28, 28, 3), dtype=torch.uint8).numpy(), 28)
    mixture = load_mixture(MedForgeClassifier(build_backbone(cfg.model), tasks), folder / "adapters" / "mixture-v1")
    single = PeftModel.from_pretrained(
        MedForgeClassifier(build_backbone(cfg.model), tasks), str(folder / "adapters" / "hospital-2")
    ).eval()
    with torch.no_grad():
        expected = torch.softmax(single(pixel_values=images, task="bloodmnist"), -1)
    torch.testing.assert_close(mixture(images, "bloodmnist"), expected, rtol=1e-4, atol=1e-5)
    spec = json.loads((folder / "adapters" / "mixture-v3" / "mixture.json").read_text())
    assert sorted(spec["components"]) == ["hospital-0", "hospital-1", "hospital-2"]


def test_arrival_order_follows_the_replies_and_a_failed_hospital_is_left_out(tmp_path_factory, flower_identity):
    results, _ = run(
        tmp_path_factory,
        LocalGrid(3, reply_order=[1, 2, 0], failing=(2,)),
        "strategy.one_shot=false",
        "strategy.methods=[fusion]",
        "strategy.baselines=[]",
    )
    assert results["strategy_details"]["order"] == [1, 0]
    assert [v["name"] for v in results["versions"]] == ["hospital-0", "hospital-1", "fusion-v1", "fusion-v2"]
    assert results["failures"][0]["hospital_id"] == 2 and "disk full" in results["failures"][0]["error"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.methods=[blend]", "strategy.methods"),
        ("strategy.order=configured", "arrival_order"),
        ("strategy.level=block", "strategy.level"),
        ("strategy.calibration.init=photos", "calibration.init"),
        ("strategy.baselines=[nope]", "baselines"),
        ("strategy.search.optimizer=Nope", "nevergrad"),
        ("data.flags=[chestmnist,breastmnist]", "multi-label"),
    ],
)
def test_bad_medforge_settings_fail_before_flower_starts(override, message):
    with pytest.raises(ValueError, match=message):
        validate_experiment(compose_experiment([*FAST, override]))


def test_an_arriving_adapter_with_nan_is_screened_out(tmp_path_factory, flower_identity, monkeypatch):
    from fl_app.hospital_steps import Hospital

    train = Hospital.train

    def poisoned_train(self, start, server_round, calibration=None):
        reply = train(self, start, server_round, calibration)
        if self.id == 1:
            arrays = reply["arrays"]
            key = next(k for k in arrays if ".lora_B." in k)
            values = arrays[key].numpy().copy()
            values[0, 0] = float("nan")
            from flwr.app import Array

            arrays[key] = Array(values)
        return reply

    monkeypatch.setattr(Hospital, "train", poisoned_train)
    results, _ = run(
        tmp_path_factory, LocalGrid(3), "strategy.one_shot=false", "strategy.methods=[fusion]", "strategy.baselines=[]"
    )
    assert results["strategy_details"]["order"] == [0, 2]
    assert results["failures"][0]["hospital_id"] == 1 and results["failures"][0]["phase"] == "screen"


def test_in_multi_center_each_hospital_version_keeps_its_own_head(tmp_path_factory, flower_identity):
    """Hospitals sharing one task: `hospital-<id>` is that hospital's adapter, not its LoRA with the merged head."""
    from safetensors.torch import load_file

    # Prepare / Execute
    results, folder = run(
        tmp_path_factory,
        LocalGrid(3),
        "data=multi_center",
        "data.flags=[breastmnist]",
        "strategy.methods=[fusion]",
        "strategy.progressive=false",
        "strategy.baselines=[]",
    )
    # Assert: the three hospitals' saved heads differ (each trained its own), none is the merged head
    heads = [
        next(
            t
            for k, t in load_file(folder / "adapters" / f"hospital-{i}" / "adapter_model.safetensors").items()
            if k.endswith("heads.breastmnist.weight")
        )
        for i in range(3)
    ]
    merged = next(
        t
        for k, t in load_file(folder / "adapters" / "fusion-one-shot" / "adapter_model.safetensors").items()
        if k.endswith("heads.breastmnist.weight")
    )
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    assert not any(torch.equal(h, merged) for h in heads)
