"""Data statistics a hospital sends with its adapter for the merges that read them (RegMean, Fisher).

The hospital side and the wire vocabulary, torch only: a reply's `merge-stats` ArrayRecord holds

- `<module>.gram`: the mean outer product of a LoRA-targeted layer's inputs on the training split,
  (d_in, d_in); a convolution's inputs are its unfolded patches (channels x kernel, in the order
  PEFT flattens A), one row per output position; a head's inputs are the penultimate features with
  a constant 1 appended for its bias, (d + 1, d + 1). RegMean (Jin et al. 2023) merges with them.
- `<parameter key>.fisher`: the diagonal Fisher of a released parameter (LoRA factor, head), the mean
  over training examples of the squared gradient of log p(y | x), y drawn from the model's own
  prediction (the "true" Fisher of Matena & Raffel 2022). Fisher merging weighs by it.

Both are means (per position, per example): the merge weight, not the Gram's scale, decides how
much a hospital counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

STATS = "merge-stats"  # the reply's ArrayRecord of statistics
REQUEST = "merge-stats"  # the train instructions' config entry asking for them (JSON of StatsRequest)
StatKind = Literal["gram", "fisher"]
STAT_KINDS: tuple[str, ...] = get_args(StatKind)
GRAM_SUFFIX = ".gram"
FISHER_SUFFIX = ".fisher"


def gram_key(module: str) -> str:
    """The stats key of a layer's input Gram (a LoRA module path, or a head's prefix `...heads.<task>`)."""
    return module + GRAM_SUFFIX


def fisher_key(parameter_key: str) -> str:
    """The stats key of a released parameter's diagonal Fisher (an adapter state key)."""
    return parameter_key + FISHER_SUFFIX


def head_prefix(weight_key: str) -> str:
    """`...heads.<task>` from the head's weight key `...heads.<task>.weight`."""
    if not weight_key.endswith(".weight"):
        raise ValueError(f"a head's weight key ends with '.weight', got {weight_key!r}")
    return weight_key[: -len(".weight")]


def check_kinds(kinds: Iterable[str], where: str = "strategy.stats") -> tuple[str, ...]:
    """The kinds as a sorted tuple, or a ValueError naming the unknown one and the choices."""
    kinds = tuple(sorted(set(kinds)))
    unknown = [k for k in kinds if k not in STAT_KINDS]
    if unknown:
        raise ValueError(f"{where} has unknown statistics {unknown}; choose from {list(STAT_KINDS)}")
    return kinds


@dataclass(frozen=True)
class StatsRequest:
    """What the server asks a hospital to compute after training (sent as JSON in the train config)."""

    kinds: tuple[str, ...]
    fisher_examples: int = 256  # training examples the Fisher is averaged over (one backward pass each)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", check_kinds(self.kinds, "the merge-stats request"))
        if not (isinstance(self.fisher_examples, int) and self.fisher_examples >= 1):
            raise ValueError(f"fisher_examples must be an integer >= 1, got {self.fisher_examples!r}")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "kinds": list(self.kinds)})

    @staticmethod
    def from_json(text: str) -> StatsRequest:
        given: dict[str, Any] = json.loads(text)
        known = set(StatsRequest.__dataclass_fields__)
        if set(given) - known:
            raise ValueError(
                f"the merge-stats request has unknown fields {sorted(set(given) - known)}; known {sorted(known)}"
            )
        return StatsRequest(kinds=tuple(given.get("kinds", ())), fisher_examples=int(given.get("fisher_examples", 256)))


def layer_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """The rows a layer's weight multiplies: (positions, d_in). Conv2d: unfolded patches; Linear: features."""
    conv = getattr(module, "base_layer", module)  # a PEFT LoRA layer wraps the original layer
    if isinstance(conv, nn.Conv2d):
        if isinstance(conv.padding, str):
            raise ValueError(
                f"{type(conv).__name__} with padding={conv.padding!r}: pad explicitly to take its input Gram"
            )
        if conv.groups != 1:
            raise ValueError(f"a grouped convolution (groups={conv.groups}) takes no LoRA and has no input Gram")
        patches = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (B·L, C·kh·kw), A's flattening order
    return x.reshape(-1, x.shape[-1])


class GramRecorder:
    """Forward pre-hooks accumulating Σ x xᵀ (float64) of each named layer's inputs, and the row count."""

    def __init__(self, model: nn.Module, layers: Mapping[str, bool]) -> None:
        """layers: module name -> whether a constant 1 is appended (a head's bias)."""
        modules = dict(model.named_modules())
        missing = sorted(set(layers) - set(modules))
        if missing:
            raise ValueError(f"no module named {missing[:3]} in the model; the adapter's modules are its LoRA paths")
        self.sums: dict[str, Tensor] = {}
        self.rows: dict[str, int] = {}
        self.handles = [
            modules[name].register_forward_pre_hook(self._hook(name, modules[name], bias))
            for name, bias in layers.items()
        ]

    def _hook(self, name: str, module: nn.Module, bias: bool) -> Callable:
        def record(_module: nn.Module, args: tuple) -> None:
            rows = layer_inputs(module, args[0].detach()).to(torch.float64)
            if bias:
                rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
            self.sums[name] = self.sums.get(name, 0) + rows.T @ rows
            self.rows[name] = self.rows.get(name, 0) + rows.shape[0]

        return record

    def close(self) -> dict[str, Tensor]:
        """Remove the hooks; the mean Gram per layer, float32, keyed by `gram_key`."""
        for handle in self.handles:
            handle.remove()
        return {gram_key(name): (self.sums[name] / self.rows[name]).float() for name in self.sums}


@torch.no_grad()
def input_grams(
    model: nn.Module, layers: Mapping[str, bool], batches: Iterable[Tensor], forward: Callable[[Tensor], Any]
) -> dict[str, Tensor]:
    """Mean input Gram of each layer over every batch: `forward(batch)` runs the model once per batch."""
    recorder = GramRecorder(model, layers)
    try:
        for batch in batches:
            forward(batch)
    finally:
        grams = recorder.close()
    missing = sorted(set(layers) - {k[: -len(GRAM_SUFFIX)] for k in grams})
    if missing:
        raise ValueError(f"layers {missing[:3]} saw no input during the forward passes; are they on the task's path?")
    return grams


def sampled_log_likelihood(logits: Tensor, multi_label: bool, generator: torch.Generator) -> Tensor:
    """log p(ŷ | x) summed over the batch, ŷ drawn from the model's own prediction (detached)."""
    if multi_label:
        probabilities = torch.sigmoid(logits.detach().double()).cpu()
        drawn = torch.bernoulli(probabilities, generator=generator).to(logits.device, logits.dtype)
        return -nn.functional.binary_cross_entropy_with_logits(logits, drawn, reduction="sum")
    probabilities = torch.softmax(logits.detach().double(), dim=-1).cpu()
    drawn = torch.multinomial(probabilities, 1, generator=generator).to(logits.device)[:, 0]
    return -nn.functional.cross_entropy(logits, drawn, reduction="sum")


def diagonal_fisher(
    parameters: Mapping[str, nn.Parameter], examples: Iterable[Tensor], log_likelihood: Callable[[Tensor], Tensor]
) -> dict[str, Tensor]:
    """Mean over examples of the squared gradient of `log_likelihood(example)` for each parameter.

    One backward pass per example (a batch's gradient squared is not the mean of squared per-example
    gradients). Keys: `fisher_key(parameter key)`.
    """
    sums = {key: torch.zeros_like(p, dtype=torch.float64) for key, p in parameters.items()}
    seen = 0
    for example in examples:
        for p in parameters.values():
            p.grad = None
        log_likelihood(example).backward()
        for key, p in parameters.items():
            if p.grad is not None:
                sums[key] += p.grad.detach().to(torch.float64).square()
        seen += 1
    for p in parameters.values():
        p.grad = None
    if seen == 0:
        raise ValueError("diagonal_fisher needs at least one example, got none")
    return {fisher_key(key): (total / seen).float() for key, total in sums.items()}


def stats_bytes(stats: Mapping[str, Tensor]) -> int:
    """Bytes of the statistics' values (what they add to a reply, keys aside)."""
    return sum(t.numel() * t.element_size() for t in stats.values())
