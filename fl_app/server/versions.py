"""Saving a model version as a PEFT adapter folder, the same way for a run and for a re-merge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from fl_app.model.adapter import save_adapter
from fl_app.model.backbone import build_backbone
from fl_app.model.lora import linear_module_names, lora_config
from strategies.outcome import ModelVersion


def save_version(path: Path, cfg: DictConfig, version: ModelVersion, details: dict[str, Any]) -> Path:
    """Write `version` (LoRA + the heads it carries) to `path` with its own rank and alpha."""
    with torch.device("meta"):  # module names only: no weights, no memory
        available = linear_module_names(build_backbone(cfg.model))
    tasks = sorted({k.split("heads.")[-1].split(".")[0] for k in version.state if "heads." in k})
    config = lora_config(available, cfg.lora, tasks, rank=version.r, alpha=version.alpha)
    config.lora_dropout = 0.0
    return save_adapter(path, version.state, config, extra=details)
