"""Real Flower simulations on the Ray backend (3 hospitals), asserting on the results folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from fl_app.config import compose_experiment
from fl_app.hospital_steps import task_outputs
from fl_app.model import MedForgeClassifier, build_backbone
from fl_app.server.results import read_results
from fl_app.simulation import run_simulation
from tests.conftest import REPO, TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

CONTRACT_KEYS = {
    "strategy",
    "merge",
    "seed",
    "scenario",
    "data_source",
    "hospitals",
    "versions",
    "communication",
    "wall_seconds",
}


def tiny_overrides(tmp: Path, *extra: str) -> list[str]:
    return [*TINY, "train.local_epochs=1", f"data.root={tmp / 'no-medmnist'}", *extra]


@pytest.fixture(scope="module")
def one_shot_run(tmp_path_factory):
    """`python scripts/run.py` exactly as a user types it (3 hospitals, tiny model)."""
    tmp = tmp_path_factory.mktemp("one_shot")
    run_dir = tmp / "run"
    command = [
        sys.executable,
        str(REPO / "scripts" / "run.py"),
        f"hydra.run.dir={run_dir}",
        "strategy=one_shot",
        *tiny_overrides(tmp),
    ]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return run_dir, completed.stdout


def test_run_script_prints_the_results_folder_last(one_shot_run):
    run_dir, stdout = one_shot_run

    assert stdout.strip().splitlines()[-1] == str(run_dir)


def test_one_shot_results_follow_the_run_contract(one_shot_run):
    run_dir, _ = one_shot_run

    results = read_results(run_dir)

    assert CONTRACT_KEYS <= set(results) and results["status"] == "completed"
    assert results["strategy"] == "one_shot" and results["merge"] == "task_arithmetic"
    assert results["data_source"] == "synthetic" and results["scenario"] == "multi_task"
    assert [h["id"] for h in results["hospitals"]] == [0, 1, 2]
    assert [h["task"] for h in results["hospitals"]] == ["breastmnist", "pneumoniamnist", "bloodmnist"]
    names = [v["name"] for v in results["versions"]]
    assert names == ["hospital-0", "hospital-1", "hospital-2", "merged"]
    for version in results["versions"]:  # the merge scored on every task, each hospital's adapter at its own hospital
        own = version["kind"] == "hospital"
        assert set(version["per_hospital"]) == ({str(version["hospital"])} if own else {"0", "1", "2"})
        assert set(version["per_task"]) == (
            {version["task"]} if own else {"breastmnist", "pneumoniamnist", "bloodmnist"}
        )
        assert 0.0 <= version["mean_acc"] <= 1.0
    assert (run_dir / "config.yaml").exists()


def test_one_shot_uploads_one_adapter_per_hospital(one_shot_run):
    run_dir, _ = one_shot_run
    results = read_results(run_dir)
    communication = results["communication"]

    assert communication["rounds"] == 1
    for hospital in results["hospitals"]:
        adapter = load_file(run_dir / "adapters" / f"hospital-{hospital['id']}" / "adapter_model.safetensors")
        own = {k: v for k, v in adapter.items() if ".lora_" in k or f"heads.{hospital['task']}." in k}
        tensor_bytes = sum(v.numel() * v.element_size() for v in own.values())
        uploaded = communication["per_hospital"][str(hospital["id"])]["upload_bytes"]
        assert tensor_bytes < uploaded < tensor_bytes * 1.1 + 4096  # the adapter plus record overhead, nothing more
    assert communication["upload_bytes"] == sum(h["upload_bytes"] for h in communication["per_hospital"].values())


def test_merged_adapter_loads_with_peft_and_is_the_exact_task_arithmetic(one_shot_run):
    run_dir, _ = one_shot_run
    cfg = compose_experiment([*TINY])
    classifier = MedForgeClassifier(build_backbone(cfg.model), task_outputs({"data": {"flags": list(cfg.data.flags)}}))

    merged = PeftModel.from_pretrained(classifier, run_dir / "adapters" / "merged")

    state = get_peft_model_state_dict(merged)
    weights = read_results(run_dir)["versions"][-1]["weights"]
    module = "base_model.model.backbone.layers.0.attention.q_proj"
    delta = state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"]  # merged alpha == r: scale 1
    expected = torch.zeros_like(delta)
    for hospital_id, weight in weights.items():
        hospital = load_file(run_dir / "adapters" / f"hospital-{hospital_id}" / "adapter_model.safetensors")
        expected += (
            weight
            * (cfg.lora.alpha / cfg.lora.r)
            * hospital[f"{module}.lora_B.weight"]
            @ hospital[f"{module}.lora_A.weight"]
        )
    assert torch.allclose(delta, expected, atol=1e-5, rtol=1e-4)
    assert merged(pixel_values=torch.zeros(1, 3, 28, 28), task="bloodmnist").shape == (1, 8)


def test_cross_evaluation_scores_every_adapter_everywhere_and_changes_no_figure(tmp_path, one_shot_run):
    """The full matrix (strategy.cross_evaluation=true) adds the cross cells: the planned cells stay the same."""
    cfg = compose_experiment(tiny_overrides(tmp_path, "strategy=one_shot", "strategy.cross_evaluation=true"))

    cross = read_results(run_simulation(cfg, tmp_path / "cross", quiet=True))

    planned = read_results(one_shot_run[0])
    assert cross["status"] == "completed"
    by_name = {v["name"]: v for v in cross["versions"]}
    for version in planned["versions"]:
        full = by_name[version["name"]]
        assert set(full["per_hospital"]) == {"0", "1", "2"}
        for hospital, metrics in version["per_hospital"].items():
            assert full["per_hospital"][hospital] == metrics  # same seed, same cell
        if version["kind"] != "hospital":
            assert (full["per_task"], full["mean_acc"]) == (version["per_task"], version["mean_acc"])
    sent = cross["evaluation_traffic"]["download_bytes"]
    assert sent > 1.5 * planned["evaluation_traffic"]["download_bytes"]  # 4 versions to each of 3 hospitals, not 2


def test_fedavg_two_rounds_uploads_twice_the_adapters(tmp_path, one_shot_run):
    cfg = compose_experiment(tiny_overrides(tmp_path, "strategy=fedavg", "strategy.rounds=2"))

    run_dir = run_simulation(cfg, tmp_path / "fedavg", quiet=True)

    results = read_results(run_dir)
    assert results["status"] == "completed" and results["merge"] is None
    assert [v["name"] for v in results["versions"]] == ["fedavg-round-1", "fedavg-round-2"]
    assert results["communication"]["rounds"] == 2
    one_shot = read_results(one_shot_run[0])["communication"]["upload_bytes"]
    assert results["communication"]["upload_bytes"] == pytest.approx(2 * one_shot, rel=0.01)
    assert (run_dir / "adapters" / "fedavg-round-2" / "adapter_config.json").exists()


def test_a_failing_hospital_is_reported_and_left_out(tmp_path):
    cfg = compose_experiment(tiny_overrides(tmp_path, "simulation.fail_hospitals=[1]", "strategy.min_hospitals=2"))

    run_dir = run_simulation(cfg, tmp_path / "failing", quiet=True)

    results = read_results(run_dir)
    assert results["status"] == "completed"
    assert [h["id"] for h in results["hospitals"]] == [0, 2]
    failure = results["failures"][0]
    assert failure["hospital_id"] == 1 and "simulated failure" in failure["error"]
    assert set(results["versions"][-1]["weights"]) == {"0", "2"}


def test_too_few_hospitals_stops_the_run_and_keeps_what_was_written(tmp_path):
    cfg = compose_experiment(tiny_overrides(tmp_path, "simulation.fail_hospitals=[0,1]", "strategy.min_hospitals=2"))

    with pytest.raises(RuntimeError, match="only 1 hospital"):
        run_simulation(cfg, tmp_path / "too_few", quiet=True)

    results = read_results(tmp_path / "too_few")
    assert results["status"] == "failed" and "strategy.min_hospitals=2" in results["error"]
    assert [h["id"] for h in results["hospitals"]] == [2]
    assert {f["hospital_id"] for f in results["failures"]} == {0, 1}


def test_flwr_run_with_run_config_knobs(tmp_path):
    """`flwr run . <connection> --run-config ...` with no resolved file: conf/ defaults + knobs."""
    from fl_app.simulation import CONNECTION, PROJECT_ROOT, local_superlink

    results_dir = tmp_path / "flwr-run"
    overrides = " ".join(tiny_overrides(tmp_path))
    run_config = f"strategy='fedavg' rounds=1 seed=3 results-dir='{results_dir}' overrides='{overrides}'"
    command = [
        "flwr",
        "run",
        str(PROJECT_ROOT),
        CONNECTION,
        "--stream",
        "--federation-config",
        "num-supernodes=3",
        "--run-config",
        run_config,
    ]

    with local_superlink(tmp_path / "superlink.log") as env:
        completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    assert completed.returncode == 0, completed.stdout[-3000:]
    results = read_results(results_dir)
    assert results["status"] == "completed", results.get("error")
    assert results["strategy"] == "fedavg" and results["seed"] == 3
    assert [v["name"] for v in results["versions"]] == ["fedavg-round-1"]
    assert json.loads(json.dumps(results["config"]))["lora"]["r"] == 4


def test_regmean_run_keeps_the_statistics_counts_their_bytes_and_remerges_fisher(tmp_path):
    # Prepare: RegMean in the run, Fishers asked for as well (kept for re-merging)
    from fl_app.merge_stats import stats_bytes
    from fl_app.model.adapter import load_stats
    from fl_app.remerge import load_stored_run
    from fl_app.remerge.plan import plan_requests
    from fl_app.remerge.run import merge_version

    cfg = compose_experiment(
        tiny_overrides(tmp_path, "strategy.merge=regmean", "strategy.stats=[fisher]", "strategy.fisher_examples=8")
    )

    # Execute
    run_dir = run_simulation(cfg, tmp_path / "regmean", quiet=True)

    # Assert: merged by RegMean, every hospital's statistics beside its adapter and in its upload
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["versions"][-1]["method"] == "regmean"
    run = load_stored_run(run_dir)
    for hospital in run.hospitals:
        stats = load_stats(run_dir / "adapters" / f"hospital-{hospital.id}")
        kinds = {key.rsplit(".", 1)[1] for key in stats}
        assert kinds == {"gram", "fisher"} and stats.keys() == hospital.stats.keys()
        sent = results["train_metrics"]["1"][str(hospital.id)]["merge-stats-bytes"]
        upload = results["communication"]["per_hospital"][str(hospital.id)]["upload_bytes"]
        assert sent == stats_bytes(stats) and upload > sent
    (request,) = plan_requests(["fisher"], [], run.experiment.strategy)
    assert merge_version(run, request).details["method"] == "fisher"
