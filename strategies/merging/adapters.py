"""Merge whole hospital adapters given as flat PEFT state dicts (`get_peft_model_state_dict`).

A state holds LoRA keys `<module>.lora_A.weight` / `<module>.lora_B.weight` and classification
head keys `...heads.<task>.<param>`. LoRA modules merge through a registered `ModuleMerge` (task
arithmetic by default); heads merge per task by a weighted average over the positive weights
(`weights.head_weights`: a negative weight subtracts a ΔW, but a head is not an update).

Conv2d LoRA (PEFT: A is a conv (r, d_in, kh, kw), B a 1x1 conv (d_out, r, 1, 1)) is the same
algebra over the flattened kernel: ΔW = B (d_out, r) @ A (r, d_in·kh·kw). `split_lora_modules`
flattens to that 2-D form; `lora_modules_to_state(..., like=state)` gives the kernels back.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from fl_app.adapter_keys import LORA_A_SUFFIX, LORA_B_SUFFIX, head_task, lora_module
from fl_app.merge_stats import fisher_key, gram_key
from strategies.merging.fisher import FISHER_A, FISHER_B
from strategies.merging.lowrank import LoraFactors, ModuleMerge
from strategies.merging.registry import MERGE_METHODS, MergeMethod, get_merge_method
from strategies.merging.regmean import GRAM
from strategies.merging.sparsify import as_generator
from strategies.merging.weights import average_tensors, head_weights


def split_lora_modules(state: Mapping[str, Tensor], scales: float | Mapping[str, float]) -> dict[str, LoraFactors]:
    """LoRA factors per module path; `scales` is lora_alpha / r, one for all modules or per module path."""
    a_keys = {k[: -len(LORA_A_SUFFIX)]: k for k in state if k.endswith(LORA_A_SUFFIX)}
    b_keys = {k[: -len(LORA_B_SUFFIX)]: k for k in state if k.endswith(LORA_B_SUFFIX)}
    for module in a_keys.keys() - b_keys.keys():
        raise ValueError(f"LoRA module {module!r} has {module}{LORA_A_SUFFIX} but no {module}{LORA_B_SUFFIX}")
    for module in b_keys.keys() - a_keys.keys():
        raise ValueError(f"LoRA module {module!r} has {module}{LORA_B_SUFFIX} but no {module}{LORA_A_SUFFIX}")
    modules: dict[str, LoraFactors] = {}
    for module, a_key in a_keys.items():
        if isinstance(scales, Mapping):
            if module not in scales:
                raise ValueError(f"no scale given for LoRA module {module!r}; scales has {sorted(scales)}")
            scale = float(scales[module])
        else:
            scale = float(scales)
        try:
            modules[module] = LoraFactors(
                A=flat_lora_a(state[a_key]), B=flat_lora_b(state[b_keys[module]]), scale=scale
            )
        except ValueError as err:
            raise ValueError(f"LoRA module {module!r}: {err}") from err
    return modules


def flat_lora_a(A: Tensor) -> Tensor:
    """LoRA A as a matrix (r, d_in): a Conv2d kernel (r, d_in, kh, kw) is flattened to (r, d_in·kh·kw)."""
    return A if A.dim() == 2 else A.reshape(A.shape[0], -1)


def flat_lora_b(B: Tensor) -> Tensor:
    """LoRA B as a matrix (d_out, r): PEFT's Conv2d B is a 1x1 convolution (d_out, r, 1, 1)."""
    if B.dim() == 2:
        return B
    if B.dim() < 2 or B[0, 0].numel() != 1:
        raise ValueError(
            f"LoRA B of shape {tuple(B.shape)} is not a (d_out, r) matrix or a 1x1 convolution (d_out, r, 1, 1)"
        )
    return B.reshape(B.shape[0], B.shape[1])


def lora_modules_to_state(
    modules: Mapping[str, LoraFactors], like: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Flat state of LoRA factors; the scale is not stored (it lives in LoraConfig as lora_alpha / r).

    `like`: a state with the modules' original tensor layout (any rank); Conv2d factors take its
    kernel shape back, so PEFT loads them. Without it the factors stay 2-D.
    """
    state: dict[str, Tensor] = {}
    for module, factors in modules.items():
        A, B = factors.A, factors.B
        if like is not None and module + LORA_A_SUFFIX in like:
            A = A.reshape(A.shape[0], *like[module + LORA_A_SUFFIX].shape[1:])
            B = B.reshape(B.shape[0], B.shape[1], *like[module + LORA_B_SUFFIX].shape[2:])
        state[module + LORA_A_SUFFIX] = A
        state[module + LORA_B_SUFFIX] = B
    return state


def split_heads(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Non-LoRA keys grouped by head task: {task: {key: tensor}}."""
    heads: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        if lora_module(key) is None:
            heads.setdefault(head_task(key), {})[key] = tensor
    return heads


def pad_rank(factors: LoraFactors, rank: int) -> LoraFactors:
    """Same ΔW at a larger rank: zero rows appended to A, zero columns to B."""
    extra = rank - factors.rank
    if extra < 0:
        raise ValueError(f"cannot pad a rank-{factors.rank} module down to rank {rank}")
    if extra == 0:
        return factors
    A = torch.cat([factors.A, factors.A.new_zeros(extra, factors.d_in)], dim=0)  # 2-D factors (split_lora_modules)
    B = torch.cat([factors.B, factors.B.new_zeros(factors.d_out, extra)], dim=1)
    return LoraFactors(A=A, B=B, scale=factors.scale)


@dataclass(frozen=True, eq=False)
class MergeResult:
    """A merged adapter; load it with LoraConfig(r=rank, lora_alpha=lora_alpha) so PEFT's scale is 1."""

    state: dict[str, Tensor]
    rank: int
    lora_alpha: int
    relative_error: float  # max over modules of the truncation's relative Frobenius error
    exact: bool  # an exact method and relative_error == 0.0: the merged ΔW is the method's ΔW everywhere
    module_errors: dict[str, float] = field(default_factory=dict)
    method: str = ""  # the registered name, or the function's name
    params: dict[str, Any] = field(default_factory=dict)  # the method parameters used, defaults included


def _check_module_sets(modules: Sequence[Mapping[str, LoraFactors]]) -> None:
    reference = modules[0].keys()
    if not reference:
        raise ValueError(
            f"hospital 0's state has no LoRA keys (<module>{LORA_A_SUFFIX}); "
            f"pass get_peft_model_state_dict of a LoRA model"
        )
    for i, mods in enumerate(modules[1:], start=1):
        missing, extra = sorted(reference - mods.keys()), sorted(mods.keys() - reference)
        if missing or extra:
            raise ValueError(
                f"hospital {i}'s LoRA modules differ from hospital 0's: missing {missing}, extra {extra}; "
                f"every hospital must train the same target_modules"
            )


def module_stats(stats: Mapping[str, Tensor], module: str) -> dict[str, Tensor]:
    """One LoRA module's statistics in the names merge functions read ('gram', 'fisher_A', 'fisher_B'), 2-D."""
    found = {}
    if gram_key(module) in stats:
        found[GRAM] = stats[gram_key(module)]
    if fisher_key(module + LORA_A_SUFFIX) in stats:
        found[FISHER_A] = flat_lora_a(stats[fisher_key(module + LORA_A_SUFFIX)])
    if fisher_key(module + LORA_B_SUFFIX) in stats:
        found[FISHER_B] = flat_lora_b(stats[fisher_key(module + LORA_B_SUFFIX)])
    return found


def head_stats(stats: Mapping[str, Tensor], head: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """One head's statistics: 'gram' (its features with a 1 appended) and each parameter's Fisher by its name."""
    keys = list(head)
    prefix = keys[0].rsplit(".", 1)[0]
    found = {name: stats[fisher_key(k)] for k in keys if fisher_key(k) in stats for name in [k.rsplit(".", 1)[1]]}
    if gram_key(prefix) in stats:
        found[GRAM] = stats[gram_key(prefix)]
    return found


HeadMerge = Callable[..., dict[str, Tensor]]  # (heads by parameter name, their statistics, weights, **params)


def _merge_heads(
    heads: Sequence[Mapping[str, Mapping[str, Tensor]]],
    weights: Sequence[float],
    tasks: Sequence[str],
    head_merge: tuple[HeadMerge, Sequence[Mapping[str, Tensor]], Mapping[str, Any]] | None = None,
) -> dict[str, Tensor]:
    for i, (hospital_heads, task) in enumerate(zip(heads, tasks)):
        if hospital_heads and task not in hospital_heads:
            raise ValueError(
                f"hospital {i} is on task {task!r} but its state holds heads only for {sorted(hospital_heads)}"
            )
    merged: dict[str, Tensor] = {}
    positive = head_weights(weights)
    for task in dict.fromkeys(t for hospital_heads in heads for t in hospital_heads):
        holders = [i for i, hospital_heads in enumerate(heads) if task in hospital_heads]
        # a head no hospital trained this round passes through, averaged over the hospitals that carry it
        contributors = [i for i in holders if tasks[i] == task] or holders
        # only positive weights shape a head (`head_weights`); with none the task has no merged head
        contributors = [i for i in contributors if positive[i] > 0]
        if not contributors:
            continue
        keys = heads[contributors[0]][task].keys()
        for i in contributors[1:]:
            if heads[i][task].keys() != keys:
                raise ValueError(
                    f"head {task!r}: hospital {i} has keys {sorted(heads[i][task])} "
                    f"but hospital {contributors[0]} has {sorted(keys)}"
                )
        if head_merge is not None:  # a data-aware method: the head from the hospitals' statistics
            fn, stats, params = head_merge
            names = {key.rsplit(".", 1)[1]: key for key in keys}
            try:
                result = fn(
                    [{name: heads[i][task][key] for name, key in names.items()} for i in contributors],
                    [head_stats(stats[i], heads[i][task]) for i in contributors],
                    [positive[i] for i in contributors],
                    **params,
                )
            except ValueError as err:
                raise ValueError(f"head {task!r} over hospitals {contributors}: {err}") from err
            merged |= {names[name]: tensor for name, tensor in result.items()}
            continue
        for key in keys:
            try:
                tensors = [heads[i][task][key] for i in contributors]
                merged[key] = average_tensors(tensors, [positive[i] for i in contributors])
            except ValueError as err:
                raise ValueError(f"head {task!r} key {key!r} over hospitals {contributors}: {err}") from err
    return merged


@torch.no_grad()
def merge_adapters(
    states: Sequence[Mapping[str, Tensor]],
    scales: Sequence[float | Mapping[str, float]],
    weights: Sequence[float],
    tasks: Sequence[str],
    scale: float = 1.0,
    rank: int | None = None,
    *,
    method: str | ModuleMerge = "task_arithmetic",
    params: Mapping[str, Any] | None = None,
    stats: Sequence[Mapping[str, Tensor]] | None = None,
) -> MergeResult:
    """Merge hospital adapters into one: LoRA modules by `method`, heads by per-task weighted average.

    scales[i]: hospital i's lora_alpha / r (or per module path); weights[i]: its merge weight (not
    renormalised for LoRA; renormalised within each task for heads); tasks[i]: its task; method: a
    name in MERGE_METHODS or a `ModuleMerge` function; params: the method's parameters (checked
    against those a registered method declares; missing ones take its defaults). A `seed` becomes
    one torch.Generator drawn module after module in state order, as PEFT draws from the global RNG.
    All modules are zero-padded to one rank so PEFT can load the result with a single r.
    stats[i]: hospital i's statistics (`fl_app.merge_stats` keys) for a data-aware method (regmean,
    fisher), which then also merges the heads of each task with them.
    """
    fn, name, kwargs, method_exact = _resolve_method(method, params)
    registered = MERGE_METHODS.get(name)
    needs = registered.stats if registered is not None and registered.fn is fn else None
    if needs is not None:
        stats = _check_stats(stats, len(states), registered)
    if len(states) == 0:
        raise ValueError("merge_adapters needs at least one hospital state, got none")
    for label, values in (("scales", scales), ("weights", weights), ("tasks", tasks)):
        if len(values) != len(states):
            raise ValueError(f"got {len(values)} {label} for {len(states)} hospital states; pass one per hospital")
    modules, heads = [], []
    for i, (state, hospital_scale) in enumerate(zip(states, scales)):
        try:
            modules.append(split_lora_modules(state, hospital_scale))
            heads.append(split_heads(state))
        except ValueError as err:
            raise ValueError(f"hospital {i}: {err}") from err
    _check_module_sets(modules)
    # merge each LoRA module
    call_kwargs = dict(kwargs)
    if "seed" in call_kwargs:
        call_kwargs["seed"] = as_generator(call_kwargs["seed"])
    merged: dict[str, LoraFactors] = {}
    errors: dict[str, float] = {}
    for module in modules[0]:
        if needs is not None:
            call_kwargs["stats"] = [module_stats(hospital, module) for hospital in stats]
        try:
            merged[module], errors[module] = fn([m[module] for m in modules], weights, scale, rank, **call_kwargs)
        except ValueError as err:
            raise ValueError(f"LoRA module {module!r}: {err}") from err
    # normalise to scale 1 and pad to one rank
    merged = {module: LoraFactors(A=f.A, B=f.scale * f.B, scale=1.0) for module, f in merged.items()}
    merged_rank = max(f.rank for f in merged.values())
    merged = {module: pad_rank(f, merged_rank) for module, f in merged.items()}
    head_merge = None
    if needs is not None and registered.head_fn is not None:
        accepted = inspect.signature(registered.head_fn).parameters
        head_merge = (registered.head_fn, stats, {k: v for k, v in kwargs.items() if k in accepted})
    state = lora_modules_to_state(merged, like=states[0]) | _merge_heads(heads, weights, tasks, head_merge)
    relative_error = max(errors.values())
    return MergeResult(
        state=state,
        rank=merged_rank,
        lora_alpha=merged_rank,
        relative_error=relative_error,
        exact=method_exact and relative_error == 0.0,
        module_errors=errors,
        method=name,
        params=kwargs,
    )


def _check_stats(
    stats: Sequence[Mapping[str, Tensor]] | None, count: int, method: MergeMethod
) -> Sequence[Mapping[str, Tensor]]:
    if stats is None or len(stats) != count or any(not hospital for hospital in stats):
        missing = list(range(count)) if stats is None else [i for i, h in enumerate(stats) if not h]
        raise ValueError(
            f"merge method {method.name!r} reads the hospitals' {method.stats!r} statistics, and hospitals {missing} "
            f"have none: run with strategy.stats=[{method.stats}] (or strategy.merge={method.name}) so each hospital "
            "sends them with its adapter"
        )
    return stats


def _resolve_method(
    method: str | ModuleMerge, params: Mapping[str, Any] | None
) -> tuple[ModuleMerge, str, dict[str, Any], bool]:
    """The function to call per module, its name, its keyword arguments, and whether it is exact."""
    if isinstance(method, str):
        registered = get_merge_method(method)
    else:  # a registered function passed directly is that method; any other function is trusted as exact
        registered = next((m for m in MERGE_METHODS.values() if m.fn is method and not m.bound), None)
        if registered is None:
            return method, getattr(method, "__name__", repr(method)), dict(params or {}), True
    return registered.fn, registered.name, registered.resolve(params), registered.exact


class HospitalAdapter(Protocol):
    """What a merge needs of one hospital's adapter (a reply off the wire, one read from disk, a submission).

    A data-aware method (regmean, fisher) also reads its `stats` (`fl_app.merge_stats` keys), where it has any.
    """

    @property
    def state(self) -> Mapping[str, Tensor]: ...

    @property
    def task(self) -> str: ...

    @property
    def lora_scale(self) -> float: ...


def merge_hospital_adapters(
    hospitals: Sequence[HospitalAdapter],
    weights: Sequence[float],
    *,
    method: str | ModuleMerge = "task_arithmetic",
    scale: float = 1.0,
    rank: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> MergeResult:
    """`merge_adapters` of whole hospitals: each one's state, LoRA scale and task taken from it."""
    return merge_adapters(
        [h.state for h in hospitals],
        [h.lora_scale for h in hospitals],
        weights,
        [h.task for h in hospitals],
        scale,
        rank,
        method=method,
        params=params,
        stats=[getattr(h, "stats", None) or {} for h in hospitals],
    )
