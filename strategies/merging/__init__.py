"""One-shot server merge of hospital LoRA adapters; methods registered by name in MERGE_METHODS.

Adding a method = one new module with a `ModuleMerge` function + one entry in MERGE_METHODS below.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.merging.adapters import (
    MergeResult,
    head_task,
    lora_modules_to_state,
    merge_adapters,
    split_heads,
    split_lora_modules,
)
from strategies.merging.lowrank import (
    LoraFactors,
    ModuleMerge,
    average_tensors,
    merge_weights,
    refactor_lowrank,
    task_arithmetic,
    truncation_error,
)


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: its function over one module's adapters, and where it comes from."""

    name: str
    fn: ModuleMerge
    paper: str
    exact: bool  # at rank None the merged ΔW equals the method's target exactly
    description: str


MERGE_METHODS: dict[str, MergeMethod] = {
    "task_arithmetic": MergeMethod(
        name="task_arithmetic",
        fn=task_arithmetic,
        paper="https://arxiv.org/abs/2212.04089",
        exact=True,
        description="Weighted sum of the hospitals' ΔW = s·B·A, re-factored to LoRA by truncated SVD.",
    ),
}


def get_merge_method(name: str) -> MergeMethod:
    """The registered method called `name`."""
    if name not in MERGE_METHODS:
        raise ValueError(f"unknown merge method {name!r}; choose one of {sorted(MERGE_METHODS)}")
    return MERGE_METHODS[name]


__all__ = [
    "MERGE_METHODS",
    "LoraFactors",
    "MergeMethod",
    "MergeResult",
    "ModuleMerge",
    "average_tensors",
    "get_merge_method",
    "head_task",
    "lora_modules_to_state",
    "merge_adapters",
    "merge_weights",
    "refactor_lowrank",
    "split_heads",
    "split_lora_modules",
    "task_arithmetic",
    "truncation_error",
]
