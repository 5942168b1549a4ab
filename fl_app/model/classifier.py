"""A frozen backbone with one linear head per task; PEFT wraps it with LoRA."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fl_app.model.backbone import feature_dim, pooled_features

HEADS_PREFIX = "heads"


class MedForgeClassifier(nn.Module):
    """Backbone + `heads[task]`; heads are ordinary Linear layers so PEFT can save them."""

    def __init__(self, backbone: nn.Module, task_outputs: Mapping[str, int]) -> None:
        super().__init__()
        self.backbone = backbone
        width = feature_dim(backbone)
        self.heads = nn.ModuleDict({task: nn.Linear(width, n) for task, n in task_outputs.items()})

    def forward(self, pixel_values: torch.Tensor, task: str) -> torch.Tensor:
        return self.heads[task](pooled_features(self.backbone, pixel_values))


def head_module_names(tasks) -> list[str]:
    """PEFT `modules_to_save` entries for the given task heads."""
    return [f"{HEADS_PREFIX}.{task}" for task in tasks]
