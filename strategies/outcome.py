"""What a strategy hands back: the model versions to evaluate and save."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fl_app.adapter_keys import state_tasks


@dataclass
class ModelVersion:
    """One evaluated model: LoRA + heads, its LoRA shape, and where it came from."""

    name: str
    kind: str  # hospital | merged | fedavg | progressive
    state: dict[str, torch.Tensor] = field(repr=False)
    r: int
    alpha: float
    details: dict[str, Any] = field(default_factory=dict)
    # MedForge-Mixture: {version name of a component: coefficient}; `state` then holds only heads
    mixture: dict[str, float] | None = None

    @property
    def tasks(self) -> list[str]:
        """Tasks whose head this version carries (the tasks it can be scored on)."""
        return state_tasks(self.state)


@dataclass
class StrategyOutcome:
    versions: list[ModelVersion]
    merge: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
