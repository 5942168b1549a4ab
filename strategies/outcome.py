"""What a strategy hands back: the model versions to evaluate and save, and how a merged one is described."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fl_app.adapter_keys import state_tasks
from strategies.merging import MergeResult


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
    # a hospital's merge statistics (`fl_app.merge_stats`), saved beside its adapter for re-merging
    stats: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def tasks(self) -> list[str]:
        """Tasks whose head this version carries (the tasks it can be scored on)."""
        return state_tasks(self.state)


@dataclass
class StrategyOutcome:
    """The versions a strategy made (evaluated and saved by the run) and its `strategy_details`."""

    versions: list[ModelVersion]
    details: dict[str, Any] = field(default_factory=dict)


def merged_version(
    name: str, result: MergeResult, hospital_ids: Sequence[int], weights: Sequence[float], **extra: Any
) -> ModelVersion:
    """A version made by a registered merge (one-shot, a baseline, a re-merge), with its provenance.

    Details: the method and the parameters it ran with, each hospital's weight, whether the merge
    is exact and its truncation error (the worst module's, and `truncation_summary`), the merged
    rank, then `extra` (label, weighting, ...).
    """
    details = {
        "method": result.method,
        "weights": {str(h): w for h, w in zip(hospital_ids, weights)},
        "params": result.params,
        "exact": result.exact,
        "relative_error": result.relative_error,
        "truncation": truncation_summary(result.module_errors),
        "rank": result.rank,
        **extra,
    }
    return ModelVersion(name, "merged", result.state, result.rank, result.lora_alpha, details)


def truncation_summary(module_errors: Mapping[str, float]) -> dict[str, Any]:
    """What a rank cap cost, for results.json: the relative Frobenius error of ΔW per LoRA module, its
    mean and max, and how many modules lost more than 1% (0.0 everywhere: lossless)."""
    errors = {module: float(error) for module, error in sorted(module_errors.items())}
    values = list(errors.values())
    return {
        "max": max(values, default=0.0),
        "mean": sum(values) / len(values) if values else 0.0,
        "modules_over_1pct": sum(1 for e in values if e > 0.01),
        "per_module": errors,
    }
