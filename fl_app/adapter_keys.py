"""Adapter keys: the one place that reads the names of an adapter's tensors.

An adapter state is what `get_peft_model_state_dict` returns for a MedForge classifier: LoRA
factors `<module>.lora_A.weight` / `<module>.lora_B.weight`, and the task heads PEFT saves whole
(`modules_to_save`), `...heads.<task>.<param>`. Plain Python (no torch, no Flower), so every layer
can use it: the hospital's model, the merge math, the strategies and the results.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"
HEADS_SEGMENT = "heads"  # the classifier's ModuleDict of heads (fl_app/model/classifier.py HEADS_PREFIX)

T = TypeVar("T")


def lora_module(key: str) -> str | None:
    """Module path of a LoRA key, or None for any other key."""
    for suffix in (LORA_A_SUFFIX, LORA_B_SUFFIX):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def is_lora_key(key: str) -> bool:
    """True for LoRA factor tensors (`<module>.lora_A.weight` / `<module>.lora_B.weight`)."""
    return lora_module(key) is not None


def head_task_of(key: str) -> str | None:
    """Task of a head key (the segment after the last `heads.` that a parameter name follows), or None."""
    if is_lora_key(key):
        return None
    parts = key.split(".")
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] == HEADS_SEGMENT:
            return parts[i + 1]
    return None


def head_task(key: str) -> str:
    """Task of a head key, or a ValueError saying what a key of an adapter state looks like."""
    task = head_task_of(key)
    if task is None:
        raise ValueError(
            f"key {key!r} is neither a LoRA key (<module>{LORA_A_SUFFIX} / <module>{LORA_B_SUFFIX}) "
            f"nor a head key (...{HEADS_SEGMENT}.<task>.<param>); pass the output of get_peft_model_state_dict "
            f"for a LoRA model whose only modules_to_save are the task heads"
        )
    return task


def lora_state(state: Mapping[str, T]) -> dict[str, T]:
    """The LoRA factors of a state, without heads."""
    return {k: v for k, v in state.items() if is_lora_key(k)}


def non_lora_state(state: Mapping[str, T]) -> dict[str, T]:
    """Everything but the LoRA factors: the heads of a well-formed state."""
    return {k: v for k, v in state.items() if not is_lora_key(k)}


def head_state(state: Mapping[str, T], tasks: Iterable[str]) -> dict[str, T]:
    """The heads of `tasks` in a state."""
    wanted = set(tasks)
    return {k: v for k, v in state.items() if head_task_of(k) in wanted}


def adapter_state(state: Mapping[str, T], tasks: Iterable[str]) -> dict[str, T]:
    """LoRA factors plus the heads of `tasks`: what a hospital on those tasks sends."""
    wanted = set(tasks)
    return {k: v for k, v in state.items() if is_lora_key(k) or head_task_of(k) in wanted}


def state_tasks(keys: Iterable[str]) -> list[str]:
    """The tasks whose head a state carries, sorted."""
    return sorted({task for task in map(head_task_of, keys) if task is not None})
