"""MedForge through a real Flower simulation (Ray backend): 3 hospitals arrive progressively."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import PeftModel

from fl_app.config import compose_experiment
from fl_app.data import task_info
from fl_app.hospital_steps import task_outputs
from fl_app.model import MedForgeClassifier, build_backbone
from fl_app.server.results import read_results
from fl_app.simulation import run_simulation
from tests.conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


def test_progressive_medforge_writes_v1_to_v3_with_provenance(tmp_path: Path):
    cfg = compose_experiment(
        [
            *TINY,
            "train.local_epochs=1",
            f"data.root={tmp_path / 'no-medmnist'}",
            "strategy=medforge",
            "strategy.calibration.iterations=10",
            "strategy.calibration.ipc=2",
            "strategy.search.budget=10",
        ]
    )
    run_dir = run_simulation(cfg, tmp_path / "medforge", quiet=True)
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["strategy"] == "medforge"
    versions = {v["name"]: v for v in results["versions"]}
    order = results["strategy_details"]["order"]
    assert sorted(order) == [0, 1, 2]  # the order the replies arrived in
    for method in ("fusion", "mixture"):
        for step in (1, 2, 3):
            v = versions[f"{method}-v{step}"]
            assert (v["step"], v["hospital"], v["hospitals_merged"]) == (step, order[step - 1], order[:step])
            assert sorted(v["per_task"]) == v["tasks_merged"] and v["mean_acc"] is not None
            assert (run_dir / v["adapter"]).is_dir()
    # each hospital sent its adapter and its calibration set; both counted
    for hospital_id, info in results["strategy_details"]["calibration"].items():
        classes = task_info(info["task"]).n_outputs
        assert info["images"] <= 2 * classes
        assert results["communication"]["per_hospital"][hospital_id]["upload_bytes"] > info["images"] * 28 * 28
    # the final fused main branch is a PEFT adapter
    classifier = MedForgeClassifier(build_backbone(cfg.model), task_outputs({"data": {"flags": list(cfg.data.flags)}}))
    PeftModel.from_pretrained(classifier, str(run_dir / versions["fusion-v3"]["adapter"]))
