"""A synthetic stored run for forge's math: random LoRA factors (linear and Conv2d modules) and heads on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from fl_app.model.adapter import save_stats
from fl_app.remerge.stored import ADAPTER_FILE, StoredHospital, StoredRun
from fl_app.server.results import version_entry
from strategies.merging import hospital_weights, merge_adapters, split_lora_modules
from strategies.outcome import ModelVersion, merged_version
from tests.merging.factories import state_statistics

TASKS = ["a", "a", "b", "a"]  # task a has three hospitals, task b one
N_TRAIN = [30, 50, 20, 40]
# module -> (A shape without the rank, B shape without the rank): a Linear, a 1x1 and a 3x3 Conv2d
MODULES = {"m.linear": ((12,), (10,)), "m.pw": ((5, 1, 1), (7,)), "m.conv": ((3, 3, 3), (6,))}


def hospital_state(seed: int, task: str, r: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for module, (a_shape, (d_out,)) in MODULES.items():
        conv = len(a_shape) > 1
        state[f"{module}.lora_A.weight"] = torch.randn(r, *a_shape, generator=g)
        state[f"{module}.lora_B.weight"] = torch.randn(d_out, r, *((1, 1) if conv else ()), generator=g)
    state[f"classifier.heads.{task}.weight"] = torch.randn(3, 4, generator=g)
    state[f"classifier.heads.{task}.bias"] = torch.randn(3, generator=g)
    return state


def hospital_stats(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Grams and Fishers as a hospital asked for both sends them (RegMean, Fisher merging)."""
    return state_statistics(state, "gram", seed) | state_statistics(state, "fisher", seed)


def stored_hospitals(ranks=(2, 2, 2, 2), alphas=(4.0, 4.0, 4.0, 4.0)) -> list[StoredHospital]:
    hospitals = []
    for i, (task, n, r, alpha) in enumerate(zip(TASKS, N_TRAIN, ranks, alphas)):
        state = hospital_state(100 + i, task, r)
        hospitals.append(StoredHospital(i, task, n, state, r, alpha, hospital_stats(state, i)))
    return hospitals


def save_state(folder: Path, name: str, state: dict[str, torch.Tensor]) -> None:
    (folder / "adapters" / name).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "adapters" / name / ADAPTER_FILE))


def make_run(folder: Path, hospitals: list[StoredHospital], versions: list[ModelVersion], entries=None) -> StoredRun:
    """A StoredRun whose versions are saved under folder/adapters (entries default to `version_entry`)."""
    hospital_entries = [
        {
            "name": f"hospital-{h.id}",
            "kind": "hospital",
            "adapter": f"adapters/hospital-{h.id}",
            "r": h.r,
            "lora_alpha": h.alpha,
            "hospital": h.id,
            "task": h.task,
        }
        for h in hospitals
    ]
    for h in hospitals:
        save_state(folder, f"hospital-{h.id}", h.state)
        if h.stats:
            save_stats(folder / "adapters" / f"hospital-{h.id}", h.stats)
    for v in versions:
        if v.mixture is None:
            save_state(folder, v.name, v.state)
    results = {
        "status": "completed",
        "hospitals": [{"id": h.id, "task": h.task, "n_train": h.n_train} for h in hospitals],
        "versions": hospital_entries + (entries if entries is not None else [version_entry(v) for v in versions]),
    }
    text = json.dumps(results)
    (folder / "results.json").write_text(text)
    experiment = OmegaConf.create({"strategy": {"merge_rank": None, "scale": 1.0, "weighting": "num_examples"}})
    return StoredRun(folder, text, results, experiment, hospitals)


def run_merge(hospitals, method, weighting="num_examples", ids=None):
    """A merged version as one_shot makes it (its entry does not say the weighting)."""
    chosen = [h for h in hospitals if ids is None or h.id in ids]
    weights = hospital_weights([h.id for h in chosen], [h.n_train for h in chosen], weighting)
    result = merge_adapters(
        [h.state for h in chosen],
        [h.scale for h in chosen],
        weights,
        [h.task for h in chosen],
        method=method,
        stats=[h.stats for h in chosen],
    )
    return merged_version("merged", result, [h.id for h in chosen], weights)


def dense(version: ModelVersion) -> dict[str, torch.Tensor]:
    """ΔW per module (flattened kernels) in float64, heads as they are."""
    scale = version.alpha / version.r
    lora = {k: v for k, v in version.state.items() if ".lora_" in k}
    return {m: f.delta().double() for m, f in split_lora_modules(lora, scale).items()}


def assert_same_version(got: ModelVersion, want: ModelVersion, tol: float = 1e-5) -> None:
    """Same ΔW per module (relative Frobenius) and the same heads."""
    got_delta, want_delta = dense(got), dense(want)
    assert got_delta.keys() == want_delta.keys()
    for module, delta in want_delta.items():
        if torch.linalg.norm(delta) == 0:  # model_stock of unrelated updates merges them to 0
            assert torch.linalg.norm(got_delta[module]) == 0, f"{module}: {got_delta[module]} instead of 0"
            continue
        error = (torch.linalg.norm(got_delta[module] - delta) / torch.linalg.norm(delta)).item()
        assert error < tol, f"{module}: relative error {error}"
    got_heads = {k: v for k, v in got.state.items() if ".lora_" not in k}
    want_heads = {k: v for k, v in want.state.items() if ".lora_" not in k}
    assert got_heads.keys() == want_heads.keys()
    for key, tensor in want_heads.items():
        torch.testing.assert_close(got_heads[key], tensor, rtol=tol, atol=tol)


@pytest.fixture
def hospitals() -> list[StoredHospital]:
    return stored_hospitals()


def build_tiny_run(folder: Path, scenario: str = "multi_center") -> Path:
    """A finished one_shot run folder on the tiny ViT and synthetic data: three hospitals' adapters
    (seeded random LoRA, so ΔW ≠ 0), the merge, evaluated in-process as a run would be."""
    from fl_app.config import compose_experiment, hospital_payload
    from fl_app.forge.versions import evaluate
    from fl_app.hospital_steps import simulated_hospital
    from fl_app.protocol import hospital_summary
    from fl_app.server.versions import save_version
    from strategies.merging import hospital_weights, merge_adapters
    from strategies.outcome import merged_version
    from tests.conftest import TINY_CAPS, TINY_MODEL

    data = (
        ["data=multi_center", "data.flags=[breastmnist]"]
        if scenario == "multi_center"
        else ["data.flags=[breastmnist,pneumoniamnist]"]
    )
    experiment = compose_experiment([*TINY_MODEL, *TINY_CAPS, *data, f"data.root={folder / 'no-medmnist'}"])
    payload = json.loads(hospital_payload(experiment))
    stored, summaries = [], []
    for i in range(int(experiment.simulation.num_hospitals)):
        hospital = simulated_hospital(payload, i, int(experiment.simulation.num_hospitals))
        name = hospital.model.use_adapter(payload["lora"])
        hospital.model.reset_adapter(name, seed=i)
        state = hospital.model.adapter_state(name, [hospital.task])
        g = torch.Generator().manual_seed(i)
        for key in state:
            if key.endswith(".lora_B.weight"):
                state[key] = 0.005 * torch.randn(state[key].shape, generator=g)
        r, alpha = int(payload["lora"]["r"]), float(payload["lora"]["alpha"])
        stored.append(StoredHospital(i, hospital.task, len(hospital.data.train), state, r, alpha))
        summaries.append(
            hospital_summary(
                i,
                None,
                hospital.task,
                len(hospital.data.train),
                len(hospital.data.val),
                len(hospital.data.test),
                hospital.data.data_source,
            )
        )
    weights = hospital_weights([h.id for h in stored], [h.n_train for h in stored], "num_examples")
    merged = merged_version(
        "merged",
        merge_adapters([h.state for h in stored], [h.scale for h in stored], weights, [h.task for h in stored]),
        [h.id for h in stored],
        weights,
    )
    versions = [
        ModelVersion(
            f"hospital-{h.id}",
            "hospital",
            {**{k: v for k, v in merged.state.items() if ".lora_" not in k}, **h.state},
            h.r,
            h.alpha,
            {"hospital": h.id, "task": h.task},
        )
        for h in stored
    ] + [merged]
    run = StoredRun(folder, "", {"versions": [], "hospitals": summaries}, experiment, stored)
    entries = evaluate(run, versions)
    for version in versions:
        save_version(folder / "adapters" / version.name, experiment, version, {"version": version.name})
    results = {
        "strategy": "one_shot",
        "merge": "task_arithmetic",
        "seed": int(experiment.seed),
        "status": "completed",
        "data_source": "synthetic",
        "hospitals": summaries,
        "versions": entries,
        "failures": [],
    }
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    OmegaConf.save(experiment, folder / "config.yaml", resolve=True)
    return folder


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture
def tiny_run(tiny_run_template, tmp_path) -> Path:
    """A fresh copy of the tiny run for one test."""
    import shutil

    return Path(shutil.copytree(tiny_run_template, tmp_path / "run"))
