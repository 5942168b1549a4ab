"""A results folder as forge's repository: find a version or a hospital, read a version's tensors,
evaluate new versions in-process and add them, never changing what is there."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from fl_app.forge.recipe import committed_hospital
from fl_app.remerge.evaluate import evaluate_at_hospitals
from fl_app.remerge.run import add_versions
from fl_app.remerge.stored import ADAPTER_FILE, StoredRun
from fl_app.server.evaluation import evaluation_fields
from fl_app.server.results import version_entry
from strategies.outcome import ModelVersion

logger = logging.getLogger("medforge.forge")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")


def find_version(results: Mapping[str, Any], name: str, folder: Path | str = "the run") -> dict[str, Any]:
    """The results.json entry of version `name`, or a ValueError listing the versions there are."""
    for entry in results.get("versions", []):
        if entry["name"] == name:
            return entry
    names = [v["name"] for v in results.get("versions", [])]
    raise ValueError(f"no version {name!r} in {folder}; its versions are {names}.")


def version_state(run: StoredRun, entry: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The LoRA factors and heads a version saved (adapters/<name>/adapter_model.safetensors)."""
    if entry.get("mixture") is not None:
        raise ValueError(
            f"version {entry['name']!r} is a MedForge-Mixture (an ensemble of outputs): it has no single ΔW."
        )
    path = run.folder / entry["adapter"] / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: version {entry['name']!r} of {run.folder} lost its adapter.")
    return load_file(path)


def version_scale(entry: Mapping[str, Any]) -> float:
    """PEFT's scale of a saved version: lora_alpha / r."""
    return float(entry["lora_alpha"]) / int(entry["r"])


def check_new_name(run: StoredRun, name: str) -> None:
    """A new version gets a free, valid name: forge never replaces a version."""
    if not NAME.fullmatch(name):
        raise ValueError(
            f"--name={name!r} is not a valid version name: use letters, digits and _ . = + - (it becomes adapters/<name>/)."
        )
    if name in run.version_names:
        raise ValueError(f"version {name!r} already exists in {run.folder}; choose another --name.")


def component_versions(run: StoredRun) -> dict[str, ModelVersion]:
    """The run's hospital adapters (and those recommitted) as versions: what a mixture's components are."""
    components = {
        f"hospital-{h.id}": ModelVersion(f"hospital-{h.id}", "hospital", h.state, h.r, h.alpha) for h in run.hospitals
    }
    for entry in run.results["versions"]:
        if entry.get("kind") == "commit":
            h = committed_hospital(run, entry["name"])
            components[entry["name"]] = ModelVersion(entry["name"], "commit", h.state, h.r, h.alpha)
    return components


def evaluate(run: StoredRun, versions: Sequence[ModelVersion], data_root: str | None = None) -> list[dict[str, Any]]:
    """Every version's results.json entry with its test metrics at every hospital (in this process)."""
    experiment = run.experiment if data_root is None else OmegaConf.merge(run.experiment, {"data": {"root": data_root}})
    given = {v.name for v in versions}
    needed = {c for v in versions if v.mixture for c in v.mixture} - given
    available = component_versions(run)
    missing = sorted(needed - available.keys())
    if missing:
        raise ValueError(f"mixture components {missing} are neither stored hospital adapters nor new versions.")
    components = [available[name] for name in sorted(needed)]
    recorded = {int(h["id"]): h for h in run.results.get("hospitals", [])}
    scores = evaluate_at_hospitals(experiment, [*versions, *components], run.evaluated_hospitals, recorded)
    return [{**version_entry(v), **evaluation_fields(scores, v.name)} for v in versions]


def commit(run: StoredRun, versions: Sequence[ModelVersion], entries: Sequence[dict[str, Any]]) -> None:
    """Add evaluated versions to the run (adapters, then results.json); the existing ones stay byte-identical."""
    for version in versions:
        check_new_name(run, version.name)
    add_versions(run, versions, entries, component_versions(run) | {v.name: v for v in versions})
    for entry in entries:
        logger.info(
            "Added version %s: mean ACC %s, mean AUC %s", entry["name"], fmt(entry["mean_acc"]), fmt(entry["mean_auc"])
        )


def forge_record(command: str, **fields: Any) -> dict[str, Any]:
    """What a forge-made version says about the command that made it."""
    return {"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
