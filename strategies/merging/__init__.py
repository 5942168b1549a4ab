"""One-shot server merge of hospital LoRA adapters: pure torch math, methods registered by name.

- registry.py   MERGE_METHODS: every method's function, paper, exactness and parameters
- adapters.py   whole adapters (flat PEFT state dicts): LoRA modules by a method, heads averaged
- lowrank.py    LoRA factors, exact task arithmetic, SVD re-factoring
- sparsify.py   TIES, DARE and magnitude pruning as one pipeline; knots.py, fedit.py
- weights.py    merge weights per hospital; weighted averages (heads)
- validation.py screening adapters before a merge
"""

from __future__ import annotations

from strategies.merging.adapters import (
    HospitalAdapter,
    MergeResult,
    head_task,
    lora_modules_to_state,
    merge_adapters,
    merge_hospital_adapters,
    split_heads,
    split_lora_modules,
)
from strategies.merging.fedit import fedit
from strategies.merging.knots import knots
from strategies.merging.lowrank import (
    LoraFactors,
    ModuleMerge,
    deviation_from_task_arithmetic,
    refactor_dense,
    refactor_lowrank,
    task_arithmetic,
    truncation_error,
)
from strategies.merging.registry import MERGE_METHODS, PEFT_NAMES, MergeMethod, get_merge_method
from strategies.merging.sparsify import sparse_task_arithmetic
from strategies.merging.validation import (
    Rejection,
    ScreenAction,
    ScreenResult,
    ScreenSettings,
    Submission,
    merged_update_problems,
    screen_adapters,
)
from strategies.merging.weights import (
    WEIGHTINGS,
    average_tensors,
    cap_shares,
    explicit_weights,
    head_weights,
    hospital_weights,
    merge_weights,
)

__all__ = [
    "HospitalAdapter",
    "MERGE_METHODS",
    "PEFT_NAMES",
    "WEIGHTINGS",
    "LoraFactors",
    "MergeMethod",
    "MergeResult",
    "ModuleMerge",
    "Rejection",
    "ScreenAction",
    "ScreenResult",
    "ScreenSettings",
    "Submission",
    "average_tensors",
    "cap_shares",
    "deviation_from_task_arithmetic",
    "explicit_weights",
    "fedit",
    "get_merge_method",
    "head_task",
    "head_weights",
    "hospital_weights",
    "knots",
    "lora_modules_to_state",
    "merge_adapters",
    "merge_hospital_adapters",
    "merge_weights",
    "refactor_dense",
    "refactor_lowrank",
    "merged_update_problems",
    "screen_adapters",
    "sparse_task_arithmetic",
    "split_heads",
    "split_lora_modules",
    "task_arithmetic",
    "truncation_error",
]
