"""A finished run as remerge reads it: its experiment, results and the adapters its hospitals sent."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from fl_app.adapter_keys import adapter_state
from fl_app.failures import REJECTED
from fl_app.model.adapter import load_stats
from fl_app.server.results import RESULTS_FILE
from fl_app.server.status import COMPLETED, STOPPED_SHORT
from strategies import STRATEGIES, spec_of_results, strategy_spec

ADAPTER_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class StoredHospital:
    """One hospital's adapter as it was sent: its LoRA factors and its own task head."""

    id: int
    task: str
    n_train: int
    state: dict[str, torch.Tensor] = field(repr=False)
    r: int
    alpha: float
    stats: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # fl_app.merge_stats, if collected

    @property
    def lora_scale(self) -> float:
        return self.alpha / self.r

    scale = lora_scale


@dataclass
class StoredRun:
    folder: Path
    results_text: str  # results.json as read: checked again before writing, so no concurrent change is lost
    results: dict[str, Any]
    experiment: DictConfig
    hospitals: list[StoredHospital]

    @property
    def evaluated_hospitals(self) -> list[int]:
        """Hospitals that evaluated the run's versions (a hospital that failed training still evaluates)."""
        ids = {int(h) for v in self.results["versions"] for h in (v.get("per_hospital") or {})}
        return sorted(ids) or list(range(int(self.experiment.simulation.num_hospitals)))

    @property
    def version_names(self) -> list[str]:
        return [v["name"] for v in self.results["versions"]]


def _own_state(state: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """LoRA + the head of `task`: what the hospital sent (its saved version also carries merged heads of other tasks)."""
    return adapter_state(state, [task])


def load_stored_run(folder: Path) -> StoredRun:
    """Read a run folder that holds its hospitals' adapters, or fail saying what is missing."""
    folder = Path(folder)
    results_path, config_path = folder / RESULTS_FILE, folder / "config.yaml"
    if not results_path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a results folder: it has no {RESULTS_FILE}; pass the folder scripts/run.py printed last."
        )
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing; remerge rebuilds every hospital's data and model from it.")
    text = results_path.read_text()
    results = json.loads(text)
    stored = stored_adapters(folder, results)
    n_train = {int(h["id"]): int(h["n_train"]) for h in [*results.get("received", []), *results.get("hospitals", [])]}
    hospitals = []
    for entry in sorted(stored, key=lambda v: int(v["hospital"])):
        path = folder / entry["adapter"] / ADAPTER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the adapter of hospital {entry['hospital']} in {folder} is lost."
            )
        hospital_id, task = int(entry["hospital"]), str(entry["task"])
        hospitals.append(
            StoredHospital(
                hospital_id,
                task,
                n_train[hospital_id],
                _own_state(load_file(path), task),
                int(entry["r"]),
                float(entry["lora_alpha"]),
                load_stats(path.parent),
            )
        )
    return StoredRun(folder, text, results, OmegaConf.load(config_path), hospitals)


def stored_adapters(folder: Path, results: dict[str, Any], server_round: int = 1) -> list[dict[str, Any]]:
    """The hospital adapters a run keeps: a completed run's versions of kind `hospital`; an
    interrupted or failed one-round run's adapters as they arrived (`received`, round 1)."""
    strategy, spec = results.get("strategy"), spec_of_results(results)
    if results.get("status") == COMPLETED:
        stored = [v for v in results.get("versions", []) if v.get("kind") == "hospital"]
    elif results.get("status") in STOPPED_SHORT and spec is not None and spec.one_round:
        stored = received_adapters(results, server_round)
    else:
        one_round = sorted(name for name in STRATEGIES if strategy_spec(name).one_round)
        raise ValueError(
            f"{folder} has status={results.get('status')!r} and strategy={strategy!r}; remerge needs a completed run, "
            f"or an interrupted or failed run of a one-round strategy, {one_round} (its adapters under received/)."
        )
    if not stored:
        raise ValueError(
            f"{folder} holds no hospital adapters (versions of kind 'hospital', or adapters received before it stopped; "
            f"strategy={strategy!r}): remerge needs a one_shot run, which keeps every hospital's adapter under "
            "adapters/hospital-<id>/ (and received/round-1/ as they arrive)."
        )
    return stored


def received_adapters(results: dict[str, Any], server_round: int | None = None) -> list[dict[str, Any]]:
    """results.json `received` entries (of one round), one per hospital, nodes the server refused left out."""
    refused = {f["node_id"] for f in results.get("failures", []) if f.get("reason") == REJECTED}
    entries = {}
    for entry in results.get("received", []):
        if entry.get("node_id") in refused or (server_round is not None and int(entry["round"]) != server_round):
            continue
        entries[(int(entry["round"]), int(entry["hospital"]))] = entry
    return [entries[key] for key in sorted(entries)]
