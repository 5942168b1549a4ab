"""Hospitals of different capacity (simulation.lora_r) through real Flower simulations, then forge."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from fl_app.config import compose_experiment
from fl_app.forge.withdraw import withdraw
from fl_app.server.results import read_results
from fl_app.simulation import run_simulation
from tests.conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

RANKS = "simulation.lora_r=[2,4,6]"


def _tiny(tmp_path: Path, *extra: str):
    return compose_experiment([*TINY, "train.local_epochs=1", f"data.root={tmp_path / 'no-medmnist'}", RANKS, *extra])


def _lora_rank(run_dir: Path, version: dict) -> int:
    state = load_file(run_dir / version["adapter"] / "adapter_model.safetensors")
    return next(t.shape[0] for k, t in state.items() if k.endswith("lora_A.weight"))


def test_one_shot_merges_mixed_ranks_exactly_and_forge_withdraws_from_it(tmp_path: Path):
    run_dir = run_simulation(_tiny(tmp_path, "strategy=one_shot"), tmp_path / "one_shot", quiet=True)

    results = read_results(run_dir)
    versions = {v["name"]: v for v in results["versions"]}
    assert results["status"] == "completed"
    assert [versions[f"hospital-{i}"]["r"] for i in range(3)] == [2, 4, 6]
    assert [_lora_rank(run_dir, versions[f"hospital-{i}"]) for i in range(3)] == [2, 4, 6]
    assert versions["merged"]["exact"] and versions["merged"]["r"] == 12  # lossless: Σ r_i
    lines = withdraw(run_dir, 2, "merged", verify=True)
    without = read_results(run_dir)["versions"][-1]
    assert without["name"] == "merged-without-2" and without["r"] == 6 and without["forge"]["path"] == "factored"
    assert "max relative ΔW difference" in "\n".join(lines)


def test_fedavg_over_mixed_ranks_zero_pads_to_the_largest(tmp_path: Path):
    run_dir = run_simulation(_tiny(tmp_path, "strategy=fedavg", "strategy.rounds=2"), tmp_path / "fedavg", quiet=True)

    results = read_results(run_dir)
    assert results["status"] == "completed" and not results["failures"]
    for version in results["versions"]:
        assert version["r"] == 6 and _lora_rank(run_dir, version) == 6 and version["mean_acc"] is not None


def test_medforge_fuses_and_mixes_mixed_ranks(tmp_path: Path):
    cfg = _tiny(
        tmp_path,
        "strategy=medforge",
        "strategy.calibration.iterations=5",
        "strategy.calibration.ipc=2",
        "strategy.search.budget=6",
    )
    run_dir = run_simulation(cfg, tmp_path / "medforge", quiet=True)

    results = read_results(run_dir)
    versions = {v["name"]: v for v in results["versions"]}
    assert results["status"] == "completed" and not results["failures"]
    assert versions["fusion-one-shot"]["r"] == 12 and versions["mixture-one-shot"]["mean_acc"] is not None
    assert versions["fusion-v3"]["mean_acc"] is not None and versions["mixture-v3"]["mean_acc"] is not None
