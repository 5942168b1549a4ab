"""What a strategy hands back: the model versions to evaluate and save."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ModelVersion:
    """One evaluated model: LoRA + heads, its LoRA shape, and where it came from."""

    name: str
    kind: str  # hospital | merged | fedavg
    state: dict[str, torch.Tensor] = field(repr=False)
    r: int
    alpha: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class StrategyOutcome:
    versions: list[ModelVersion]
    merge: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
