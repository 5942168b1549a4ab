"""Screen hospital adapters before a merge: structure, finite values, and ΔW norms far from the others.

Pure: state dicts in, the accepted hospitals and the reasons for every rejection out. The caller
leaves the rejected hospitals out, records the reasons, and merges the rest if enough remain.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fl_app.adapter_keys import LORA_A_SUFFIX, LORA_B_SUFFIX, head_task, lora_module
from strategies.merging.adapters import flat_lora_a, flat_lora_b


@dataclass(frozen=True)
class Rejection:
    """Why one hospital's adapter is left out: the tensor (or LoRA module) at fault and the problem."""

    hospital_id: int
    key: str
    problem: str

    def __str__(self) -> str:
        return f"hospital {self.hospital_id}: {self.key}: {self.problem}"


def _majority(values: Mapping[int, Hashable]) -> Hashable:
    """The most common value; a tie goes to the value of the earliest hospital."""
    return Counter(values.values()).most_common(1)[0][0]


def _key_problems(state: Mapping[str, Tensor], expected: set[str], source: str) -> list[tuple[str, str]]:
    problems = []
    lora = {k for k in state if lora_module(k) is not None}
    problems += [(k, f"missing: {source} send this LoRA tensor") for k in sorted(expected - lora)]
    problems += [(k, f"unexpected LoRA tensor: {source} do not send it") for k in sorted(lora - expected)]
    for key in state:
        if lora_module(key) is None:
            try:
                head_task(key)
            except ValueError:
                problems.append(
                    (key, "unexpected tensor: neither a LoRA key (<module>.lora_A/B.weight) nor a head key")
                )
    return problems


def _shape_signature(key: str, tensor: Tensor) -> tuple[int | None, ...]:
    """What must agree across hospitals: LoRA ranks may differ, so the rank axis is left out."""
    shape: tuple[int | None, ...] = tuple(tensor.shape)
    if tensor.dim() >= 2 and key.endswith(LORA_A_SUFFIX):
        return (None, *shape[1:])
    if tensor.dim() >= 2 and key.endswith(LORA_B_SUFFIX):
        return (shape[0], None, *shape[2:])
    return shape


def _describe(signature: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("r" if d is None else str(d) for d in signature) + ")"


def _lora_norm(state: Mapping[str, Tensor], module: str, scale: float) -> float:
    """||scale · B A||_F from the r x r Gram matrices, without forming B A."""
    A = flat_lora_a(state[module + LORA_A_SUFFIX]).to(torch.float64)
    B = flat_lora_b(state[module + LORA_B_SUFFIX]).to(torch.float64)
    return abs(scale) * math.sqrt(max(((B.T @ B) * (A @ A.T)).sum().item(), 0.0))


def screen_adapters(
    states: Sequence[Mapping[str, Tensor]],
    hospital_ids: Sequence[int],
    reference_keys: set[str] | None = None,
    norm_factor: float = 10.0,
    scales: Sequence[float | Mapping[str, float]] | None = None,
) -> tuple[list[int], list[Rejection]]:
    """Indices of the adapters fit to merge, and a Rejection per problem found in the others.

    Rejects, per hospital: LoRA keys missing or extra against `reference_keys` (its LoRA keys; head
    keys in it are ignored) or else against the most common key set; tensors whose shape or dtype
    differs from most hospitals' for the same key (heads are compared only with the same task's
    head; LoRA ranks may differ); LoRA A and B of one module with different ranks; NaN or Inf values;
    and a module whose ΔW norm ||s·B·A||_F is more than `norm_factor` x the median of the other
    accepted hospitals' (scales: lora_alpha / r per hospital or per module path, default 1).
    """
    if len(hospital_ids) != len(states):
        raise ValueError(f"got {len(hospital_ids)} hospital ids for {len(states)} states; pass one id per state")
    if scales is not None and len(scales) != len(states):
        raise ValueError(f"got {len(scales)} scales for {len(states)} states; pass one per state or none")
    if not (math.isfinite(norm_factor) and norm_factor >= 1.0):
        raise ValueError(f"norm_factor must be a finite number >= 1, got {norm_factor}")
    found: dict[int, list[tuple[str, str]]] = {i: [] for i in range(len(states))}
    # keys
    if reference_keys is not None:
        expected, source = {k for k in reference_keys if lora_module(k) is not None}, "the reference adapters"
    else:
        key_sets = {i: frozenset(k for k in s if lora_module(k) is not None) for i, s in enumerate(states)}
        expected, source = set(_majority(key_sets)), "most hospitals"
    for i, state in enumerate(states):
        if not any(lora_module(k) is not None for k in state):
            found[i].append(("<LoRA>", "no LoRA tensors (<module>.lora_A.weight / .lora_B.weight) in the state"))
        found[i] += _key_problems(state, expected, source)
    # shapes and dtypes, each key against the hospitals that send it
    for key in dict.fromkeys(k for s in states for k in s):
        holders = {i: s[key] for i, s in enumerate(states) if key in s}
        signatures = {i: _shape_signature(key, t) for i, t in holders.items()}
        dtypes = {i: t.dtype for i, t in holders.items()}
        shape, dtype = _majority(signatures), _majority(dtypes)
        for i, t in holders.items():
            if signatures[i] != shape:
                found[i].append((key, f"shape {tuple(t.shape)}, but most hospitals send {_describe(shape)}"))
            if dtypes[i] != dtype:
                found[i].append((key, f"dtype {t.dtype}, but most hospitals send {dtype}"))
    for i, state in enumerate(states):
        for a_key in (k for k in state if k.endswith(LORA_A_SUFFIX)):
            b_key = a_key[: -len(LORA_A_SUFFIX)] + LORA_B_SUFFIX
            A, B = state[a_key], state.get(b_key)
            if B is not None and A.dim() == 2 and B.dim() == 2 and A.shape[0] != B.shape[1]:
                found[i].append((a_key, f"rank {A.shape[0]}, but {b_key} {tuple(B.shape)} has rank {B.shape[1]}"))
    # finite values
    for i, state in enumerate(states):
        for key, t in state.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                found[i].append((key, f"{bad} of {t.numel()} values are NaN or Inf"))
    # norms, among the hospitals that passed so far
    passed = [i for i in found if not found[i]]
    for module in sorted({lora_module(k) for k in expected}):
        norms = {}
        for i in passed:
            hospital_scale = 1.0 if scales is None else scales[i]
            s = hospital_scale.get(module, 1.0) if isinstance(hospital_scale, Mapping) else hospital_scale
            norms[i] = _lora_norm(states[i], module, float(s))
        for i, norm in norms.items():
            others = [n for j, n in norms.items() if j != i]
            median = statistics.median(others) if others else 0.0
            if median > 0 and norm > norm_factor * median:
                found[i].append(
                    (
                        module,
                        f"ΔW norm ||s·B·A|| = {norm:.4g} is {norm / median:.1f}x the median {median:.4g} "
                        f"of the other hospitals (limit {norm_factor:g}x)",
                    )
                )
    accepted = [i for i in found if not found[i]]
    rejections = [Rejection(hospital_ids[i], key, problem) for i in found for key, problem in found[i]]
    return accepted, rejections
