"""MedForge's federated search at a hospital: score candidate merges on the site's own validation split.

Instead of distilled calibration sets at the server, the server sends candidates and every hospital
returns one scalar per candidate: the mean cross-entropy of the candidate's predicted probabilities
on its validation images, each image's loss clipped at `loss_clip` (so one image moves the mean by
at most loss_clip / n). With `dp_noise` = z > 0 the mean gets Gaussian noise of standard deviation
z · loss_clip / n, drawn from the operating system's randomness (the server cannot reproduce it),
and each scored candidate is one Gaussian release (noise multiplier z) in the hospital's ledger.

Two ways to send candidates (`share`, a choice the run records):
- `merged`: each candidate's fused adapter (LoRA of rank Σ rᵢ plus the task heads);
- `adapters`: every hospital's adapter once (first message), then only coefficients; the site
  fuses them itself. It sees every other hospital's adapter.

Wire format and math live here, so the ClientApp and the server's search share one vocabulary.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fl_app.adapter_keys import LORA_A_SUFFIX, LORA_B_SUFFIX, lora_state, non_lora_state

SEARCH_ACTION = "search"  # messages of type evaluate.search
MESSAGE_TYPE = f"evaluate.{SEARCH_ACTION}"
REQUEST = "search"  # config key: the request (JSON)
CANDIDATE_PREFIX = "candidate:"
PEER_PREFIX = "peer:"
HEADS = "search-heads"
LOSSES = "losses"  # metric key of the reply: one loss per candidate, in order

Share = Literal["merged", "adapters"]
SHARES: tuple[str, ...] = get_args(Share)
Kind = Literal["fusion", "mixture"]


@dataclass(frozen=True)
class SearchRequest:
    """What one search message asks: score these candidates (coefficients over `hospitals`)."""

    kind: Kind
    share: Share
    hospitals: list[int]  # the adapters' hospital ids, in coefficient order
    coefficients: list[list[float]]  # one vector per candidate
    loss_clip: float
    dp_noise: float  # z: noise std = z · loss_clip / n (0: no noise)
    max_val: int | None  # score on at most this many validation images (a seeded subset)
    seed: int
    peers: dict[str, dict[str, Any]] | None = None  # share=adapters, first message: {id: {r, alpha, task}}
    ranks: list[dict[str, float]] | None = None  # share=merged: each candidate's {r, alpha}

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> SearchRequest:
        return cls(**json.loads(text))


def search_content(request: SearchRequest, config: ConfigRecord, arrays: Mapping[str, ArrayRecord]) -> RecordDict:
    """A search message: the request in the config record, candidate or peer adapters as ArrayRecords."""
    config[REQUEST] = request.to_json()
    return RecordDict({"config": config, **arrays})


def fused_candidate(
    states: Sequence[Mapping[str, torch.Tensor]], scales: Sequence[float], weights: Sequence[float]
) -> tuple[dict[str, torch.Tensor], int]:
    """The LoRA state of Σ wᵢ·sᵢ·Bᵢ·Aᵢ at scale 1, exactly, by stacking the factors along the rank
    (rank Σ rᵢ; conv and linear layouts alike: A's rows, B's columns). Heads are not included."""
    loras = [lora_state(s) for s in states]
    modules = [k[: -len(LORA_A_SUFFIX)] for k in loras[0] if k.endswith(LORA_A_SUFFIX)]
    fused: dict[str, torch.Tensor] = {}
    for module in modules:
        a_key, b_key = module + LORA_A_SUFFIX, module + LORA_B_SUFFIX
        fused[a_key] = torch.cat([s[a_key] for s in loras], dim=0)
        fused[b_key] = torch.cat([w * scale * s[b_key] for s, scale, w in zip(loras, scales, weights)], dim=1)
    return fused, int(sum(s[modules[0] + LORA_A_SUFFIX].shape[0] for s in loras))


def heads_of(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return non_lora_state(state)


def clipped_losses(probabilities: torch.Tensor, labels: np.ndarray, loss_clip: float) -> torch.Tensor:
    """Each image's cross-entropy -log p(label), clipped at `loss_clip` (bounded sensitivity)."""
    labels = torch.as_tensor(labels.reshape(-1), dtype=torch.long)
    picked = probabilities[torch.arange(len(labels)), labels].clamp_min(1e-12)
    return (-picked.log()).clamp(max=loss_clip)


def released_loss(per_image: torch.Tensor, loss_clip: float, dp_noise: float) -> float:
    """The mean loss the site releases; with dp_noise > 0, plus noise no one else can regenerate."""
    mean = float(per_image.double().mean())
    if dp_noise <= 0:
        return mean
    generator = torch.Generator().manual_seed(secrets.randbits(63))  # the OS's randomness, never the run's seed
    sigma = dp_noise * loss_clip / len(per_image)
    return mean + float(torch.randn((), generator=generator, dtype=torch.float64)) * sigma


def validation_subset(n_val: int, max_val: int | None, seed: int) -> np.ndarray:
    """Indices of the validation images scored: all, or a seeded subset of `max_val`."""
    if max_val is None or max_val >= n_val:
        return np.arange(n_val)
    return np.sort(np.random.default_rng(seed).choice(n_val, size=max_val, replace=False))


def decode_losses(metrics: Mapping[str, Any], expected: int, loss_clip: float) -> list[float]:
    """A hospital's reported losses, checked: one finite number in [0, loss_clip] per candidate
    (noise may push a DP loss a little outside; values are clipped to the range, non-finite refused)."""
    if LOSSES not in metrics:
        raise ValueError(f"the search reply has no {LOSSES!r} metric")
    values = metrics[LOSSES]
    if not isinstance(values, list) or len(values) != expected:
        raise ValueError(f"the search reply has {values!r} as {LOSSES!r}; expected {expected} numbers")
    losses = []
    for value in values:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"the search reply's loss {value!r} is not a finite number")
        losses.append(min(max(float(value), 0.0), loss_clip))
    return losses
