"""What an adapter must look like: the server's own expectation, which screening checks replies against.

The server builds the same classifier the hospitals build, so it knows every LoRA key, each tensor's
shape (up to the LoRA rank, which may differ between hospitals), the dtype, the heads of every task,
and the norms a replied tensor is bounded by: the pretrained weight a LoRA module adapts, and a
freshly initialised head. Plain data (torch only, no PEFT, no Flower), so the merge layer can use it;
`fl_app.model.layout.adapter_layout` builds it from the experiment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fl_app.adapter_keys import LORA_A_SUFFIX, LORA_B_SUFFIX

RANK = None  # the rank axis of a LoRA shape: any positive size, equal to the hospital's reported lora-r
Shape = tuple[int | None, ...]


def lora_signature(key: str, shape: tuple[int, ...]) -> Shape:
    """A LoRA tensor's shape with the rank axis left out: A is (r, d_in, ...), B is (d_out, r, ...)."""
    if key.endswith(LORA_A_SUFFIX) and len(shape) >= 2:
        return (RANK, *shape[1:])
    if key.endswith(LORA_B_SUFFIX) and len(shape) >= 2:
        return (shape[0], RANK, *shape[2:])
    return tuple(shape)


def lora_rank(key: str, shape: tuple[int, ...]) -> int | None:
    """The rank a LoRA tensor's shape carries (rows of A, columns of B); None for other keys."""
    if len(shape) < 2:
        return None
    if key.endswith(LORA_A_SUFFIX):
        return shape[0]
    if key.endswith(LORA_B_SUFFIX):
        return shape[1]
    return None


def describe_shape(shape: Shape) -> str:
    return "(" + ", ".join("r" if d is RANK else str(d) for d in shape) + ")"


@dataclass(frozen=True)
class AdapterLayout:
    """Every tensor a hospital may send, as the server expects it.

    lora: LoRA key -> rank-free shape (`lora_signature`); heads: task -> {head key: shape};
    base_norms: LoRA module path -> Frobenius norm of the pretrained weight it adapts;
    head_init_norms: task -> norm of a freshly initialised head (weight and bias together).
    """

    lora: Mapping[str, Shape]
    heads: Mapping[str, Mapping[str, tuple[int, ...]]]
    dtype: torch.dtype
    base_norms: Mapping[str, float]
    head_init_norms: Mapping[str, float]

    @property
    def tasks(self) -> list[str]:
        return sorted(self.heads)

    @property
    def modules(self) -> list[str]:
        """LoRA module paths, in key order."""
        return list(dict.fromkeys(k[: -len(LORA_A_SUFFIX)] for k in self.lora if k.endswith(LORA_A_SUFFIX)))

    @staticmethod
    def from_states(
        lora_state: Mapping[str, torch.Tensor],
        head_states: Mapping[str, Mapping[str, torch.Tensor]],
        base_norms: Mapping[str, float],
    ) -> AdapterLayout:
        """The layout of a freshly built adapter: its LoRA tensors and its (freshly initialised) heads per task."""
        dtypes = {t.dtype for t in lora_state.values()}
        if len(dtypes) != 1:
            raise ValueError(f"a freshly built adapter should have one dtype, got {sorted(map(str, dtypes))}")
        return AdapterLayout(
            lora={k: lora_signature(k, tuple(t.shape)) for k, t in lora_state.items()},
            heads={task: {k: tuple(t.shape) for k, t in head.items()} for task, head in head_states.items()},
            dtype=dtypes.pop(),
            base_norms=dict(base_norms),
            head_init_norms={
                task: float(torch.sqrt(sum(t.double().pow(2).sum() for t in head.values())))
                for task, head in head_states.items()
            },
        )
