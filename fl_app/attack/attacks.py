"""Malicious hospitals, made from a real hospital's adapter: what a dishonest consortium member can send.

Pure functions over adapter states. Strength is a norm factor: the attacker's ΔW per LoRA module is
`factor` x the median ΔW norm of the honest hospitals for that module (tiny colluders: 1 / factor),
so "factor 10" means ten times what an honest hospital sends, whatever the module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from fl_app.adapter_keys import LORA_A_SUFFIX, LORA_B_SUFFIX, lora_module
from strategies.merging.validation import module_norm

AttackKind = Literal[
    "sign_flip", "scaled", "random", "inflated_count", "tiny", "head_flip", "refactor", "colluding_flip"
]
ATTACKS: tuple[str, ...] = get_args(AttackKind)
INFLATED_COUNT = 10**9  # the n-train an `inflated_count` attacker reports

DESCRIPTIONS = {
    "sign_flip": "its own ΔW negated, at factor x the honest median norm",
    "scaled": "its own ΔW boosted to factor x the honest median norm (model replacement)",
    "random": "a random ΔW direction at factor x the honest median norm",
    "inflated_count": f"sign_flip, and reports n-train = {INFLATED_COUNT:.0e} to take the weight",
    "tiny": "its own ΔW shrunk to 1/factor of the honest median norm (colluders drag the median down)",
    "head_flip": "its honest ΔW, and its own head negated at factor x its norm",
    "refactor": "its honest ΔW sent as B·factor, A/factor (ΔW unchanged; merges that average factors amplify it)",
    "colluding_flip": "sign_flip, every attacker sending one byte-identical adapter (one party behind several nodes)",
}


@dataclass(frozen=True)
class Attacker:
    """What a malicious hospital sends in place of its honest adapter."""

    state: dict[str, Tensor]
    n_train: int


def honest_median_norms(states: Sequence[Mapping[str, Tensor]], scales: Sequence[float]) -> dict[str, float]:
    """Per LoRA module, the median ΔW norm over the honest hospitals."""
    modules = [lora_module(k) for k in states[0] if k.endswith(LORA_A_SUFFIX)]
    return {m: float(torch.tensor([module_norm(s, m, sc) for s, sc in zip(states, scales)]).median()) for m in modules}


def make_attacker(
    kind: AttackKind,
    own: Mapping[str, Tensor],
    scale: float,
    n_train: int,
    medians: Mapping[str, float],
    factor: float,
    seed: int = 0,
) -> Attacker:
    """The adapter (and reported n-train) a hospital sends when it attacks with `kind` at `factor`.

    own: its honest adapter state (LoRA + head) and `scale` = lora_alpha / r; medians: the honest
    median ΔW norm per module. The head is sent as trained (the screen bounds heads separately).
    """
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; choose one of {list(ATTACKS)}")
    if not factor > 0:
        raise ValueError(f"attack factor must be > 0, got {factor}")
    generator = torch.Generator().manual_seed(seed)
    state = dict(own)
    if kind == "head_flip":
        return Attacker({k: (t if lora_module(k) else -factor * t) for k, t in own.items()}, n_train)
    if kind == "refactor":
        for module in medians:
            state[module + LORA_A_SUFFIX] = own[module + LORA_A_SUFFIX] / factor
            state[module + LORA_B_SUFFIX] = own[module + LORA_B_SUFFIX] * factor
        return Attacker(state, n_train)
    sign = -1.0 if kind in ("sign_flip", "inflated_count", "colluding_flip") else 1.0
    target = 1.0 / factor if kind == "tiny" else factor
    for module, median in medians.items():
        a_key, b_key = module + LORA_A_SUFFIX, module + LORA_B_SUFFIX
        if kind == "random":
            state[a_key] = torch.randn(own[a_key].shape, generator=generator, dtype=own[a_key].dtype)
            state[b_key] = torch.randn(own[b_key].shape, generator=generator, dtype=own[b_key].dtype)
        norm = module_norm(state, module, scale)
        gain = 0.0 if norm == 0 else target * median / norm
        state[b_key] = sign * gain * state[b_key]
    return Attacker(state, INFLATED_COUNT if kind == "inflated_count" else n_train)
