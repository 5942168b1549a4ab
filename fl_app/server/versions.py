"""Saving a model version as a PEFT adapter folder, the same way for a run and for a re-merge."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from fl_app.adapter_keys import lora_state
from fl_app.model.adapter import save_adapter, save_stats
from strategies.outcome import ModelVersion

# The backbone (transformers) and PEFT are imported where a version is saved, not with the ServerApp:
# that keeps them off a run's start-up. Not in a background thread: importing transformers from two
# threads at once fails ("cannot import name 'AutoModel' from 'transformers'", seen in a MedForge run).


def version_provenance(version: ModelVersion) -> dict[str, Any]:
    """What a saved adapter folder says about itself (medforge.json): its name, kind and details."""
    return {"version": version.name, "kind": version.kind, **version.details}


def save_version(path: Path, cfg: DictConfig, version: ModelVersion, details: dict[str, Any]) -> Path:
    """Write `version` (LoRA + the heads it carries) to `path` with its own rank and alpha."""
    from fl_app.model.backbone import build_backbone
    from fl_app.model.lora import linear_module_names, lora_config

    with torch.device("meta"):  # module names only: no weights, no memory
        available = linear_module_names(build_backbone(cfg.model))
    tasks = version.tasks
    config = lora_config(available, cfg.lora, tasks, rank=version.r, alpha=version.alpha)
    config.lora_dropout = 0.0
    saved = save_adapter(path, version.state, config, extra=details)
    if version.stats:
        save_stats(path, version.stats)
    return saved


def save_mixture(
    path: Path, cfg: DictConfig, version: ModelVersion, by_name: Mapping[str, ModelVersion], details: dict[str, Any]
) -> Path:
    """A MedForge-Mixture version: one PEFT adapter per component (its LoRA + the mixture's heads)
    under `components/<name>/`, and `mixture.json` with the coefficients. `fl_app.model.mixture`
    loads it back with PEFT."""
    from fl_app.model.mixture import MIXTURE_FILE

    components = {}
    for name, coefficient in version.mixture.items():
        component = ModelVersion(
            name,
            "component",
            {**lora_state(by_name[name].state), **version.state},
            by_name[name].r,
            by_name[name].alpha,
        )
        save_version(path / "components" / name, cfg, component, {"component_of": version.name})
        components[name] = {"adapter": f"components/{name}", "coefficient": coefficient}
    (path / MIXTURE_FILE).write_text(
        json.dumps({"components": components, "tasks": version.tasks, **details}, indent=2, sort_keys=True)
    )
    return path
