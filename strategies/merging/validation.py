"""Screen hospital adapters before a merge, against the server's own expectation first, then each other.

Pure: submissions in, the accepted ones (possibly clipped) and the reason for every rejection out.
Order of the checks, each on the hospitals still accepted:

1. structure, against the server's `AdapterLayout` (never against "the majority"): the task is one
   of the experiment's; exactly the expected LoRA keys with the expected shapes (any rank, equal
   to the reported lora-r) and dtype; the hospital's own head; heads of other tasks are dropped;
2. values: finite everywhere;
3. absolute bounds, with any number of hospitals: a module's ||s·B·A|| at most `max_update_ratio`
   x the norm of the pretrained weight it adapts; a head's norm at most `max_head_ratio` x a freshly
   initialised head's;
4. among hospitals of the same task, only when there are at least `MIN_MAJORITY` of them (with
   fewer there is no majority to speak for the task, and the record says so): a module's ΔW norm
   above `norm_factor` x the task's median is rejected, and a head likewise; an adapter whose whole
   ΔW points away from the task's median direction (the coordinate-wise median of the unit ΔWs) is
   rejected: cosine <= `min_cosine`, or below `min_relative_cosine` x the task's median cosine;
   a module's ΔW above `clip_factor` x the median is scaled down to it (Sun et al. 2019, "Can you
   really backdoor federated learning?", norm bounding).

For a data-aware merge (RegMean, Fisher) the statistics it reads are screened after step 3
(`stats_screen.py`: shape, finite, symmetric PSD, bounded; no dominating Gram).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fl_app.adapter_keys import LORA_A_SUFFIX, LORA_B_SUFFIX, head_task_of, is_lora_key
from fl_app.adapter_layout import AdapterLayout, describe_shape, lora_rank, lora_signature
from strategies.merging.adapters import flat_lora_a, flat_lora_b
from strategies.merging.stats_screen import gram_share_problems, stats_problems

MIN_MAJORITY = 3  # hospitals of one task needed before the others can outvote one of them


@dataclass(frozen=True)
class Submission:
    """One hospital's adapter as it arrived: who sent it, for which task, and the LoRA shape it reports."""

    hospital_id: int
    task: str
    state: Mapping[str, Tensor]
    lora_r: int
    lora_alpha: float
    stats: Mapping[str, Tensor] = field(default_factory=dict)  # fl_app.merge_stats, for data-aware merges

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.lora_r


@dataclass(frozen=True)
class ScreenSettings:
    """`strategy.screen`: the bounds of steps 3 and 4 (None switches the clip or the direction check off)."""

    norm_factor: float = 10.0
    clip_factor: float | None = 2.0
    min_cosine: float | None = 0.0
    min_relative_cosine: float | None = 0.5
    max_update_ratio: float = 1.0
    max_head_ratio: float = 100.0
    # statistics of data-aware merges (stats_screen.py)
    stats_tolerance: float = 1e-4
    max_gram_scale: float = 1e4
    max_fisher: float = 1e6
    max_gram_share: float | None = 0.9

    def __post_init__(self) -> None:
        for name in (
            "norm_factor",
            "max_update_ratio",
            "max_head_ratio",
            "stats_tolerance",
            "max_gram_scale",
            "max_fisher",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"strategy.screen.{name} must be a finite number > 0, got {value!r}")
        if self.norm_factor < 1:
            raise ValueError(
                f"strategy.screen.norm_factor must be >= 1 (a factor of the median), got {self.norm_factor}"
            )
        if self.clip_factor is not None and not (math.isfinite(self.clip_factor) and self.clip_factor >= 1):
            raise ValueError(
                f"strategy.screen.clip_factor must be null or a finite number >= 1, got {self.clip_factor}"
            )
        if self.max_gram_share is not None and not (
            math.isfinite(self.max_gram_share) and 0 < self.max_gram_share <= 1
        ):
            raise ValueError(f"strategy.screen.max_gram_share must be null or in (0, 1], got {self.max_gram_share}")
        if self.min_cosine is not None and not -1 <= self.min_cosine < 1:
            raise ValueError(f"strategy.screen.min_cosine must be null or in [-1, 1), got {self.min_cosine}")
        if self.min_relative_cosine is not None and not 0 <= self.min_relative_cosine < 1:
            raise ValueError(
                f"strategy.screen.min_relative_cosine must be null or in [0, 1), got {self.min_relative_cosine}"
            )

    @staticmethod
    def from_config(screen: Mapping[str, object] | None) -> ScreenSettings:
        """From `strategy.screen` (missing keys take the defaults; unknown keys are an error)."""
        given = dict(screen or {})
        known = set(ScreenSettings.__dataclass_fields__)
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"strategy.screen has no setting {unknown}; the settings are {sorted(known)}")
        return ScreenSettings(**given)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Rejection:
    """Why one hospital's adapter is left out: the tensor (or LoRA module) at fault and the problem."""

    hospital_id: int
    key: str
    problem: str

    def __str__(self) -> str:
        return f"hospital {self.hospital_id}: {self.key}: {self.problem}"


@dataclass(frozen=True)
class ScreenAction:
    """Something the screen changed or could not check without leaving the hospital out."""

    hospital_id: int | None  # None: about a task, not one hospital
    action: str  # dropped | clipped | no_majority
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"hospital_id": self.hospital_id, "action": self.action, "detail": self.detail}


@dataclass
class ScreenResult:
    accepted: list[int]  # indices into the submissions, in order
    states: list[dict[str, Tensor]] = field(repr=False)  # the accepted adapters as they will be merged
    rejections: list[Rejection]
    actions: list[ScreenAction]


def _structure_problems(sub: Submission, layout: AdapterLayout) -> tuple[list[tuple[str, str]], list[str]]:
    """Problems against the layout, and the keys of other tasks' heads to drop."""
    problems: list[tuple[str, str]] = []
    if sub.task not in layout.heads:
        return [("<task>", f"task {sub.task!r} is not one of this experiment's tasks {layout.tasks}")], []
    if not (isinstance(sub.lora_r, int) and sub.lora_r >= 1):
        problems.append(("<lora-r>", f"reported lora-r={sub.lora_r!r}; it must be a positive integer"))
    if not (math.isfinite(sub.lora_alpha) and sub.lora_alpha > 0):
        problems.append(("<lora-alpha>", f"reported lora-alpha={sub.lora_alpha!r}; it must be finite and > 0"))
    own_head = layout.heads[sub.task]
    dropped = []
    for key, tensor in sub.state.items():
        shape = tuple(tensor.shape)
        if is_lora_key(key):
            if key not in layout.lora:
                problems.append((key, "unexpected LoRA tensor: the experiment's adapter has no such module"))
            elif lora_signature(key, shape) != layout.lora[key]:
                problems.append(
                    (key, f"shape {shape}, the experiment's adapter has {describe_shape(layout.lora[key])}")
                )
            elif lora_rank(key, shape) != sub.lora_r:
                problems.append((key, f"rank {lora_rank(key, shape)}, but the hospital reports lora-r={sub.lora_r}"))
        elif key in own_head:
            if shape != own_head[key]:
                problems.append((key, f"shape {shape}, the {sub.task} head has {own_head[key]}"))
        elif head_task_of(key) is not None:
            dropped.append(key)  # another task's head: this hospital was not asked to train it
            continue
        else:
            problems.append((key, "unexpected tensor: neither a LoRA key nor a head key of this experiment"))
            continue
        if tensor.dtype != layout.dtype:
            problems.append((key, f"dtype {tensor.dtype}, the experiment's adapter is {layout.dtype}"))
    problems += [(k, "missing: every hospital sends this LoRA tensor") for k in layout.lora if k not in sub.state]
    problems += [(k, f"missing: the {sub.task} head") for k in own_head if k not in sub.state]
    return problems, dropped


def _nonfinite(state: Mapping[str, Tensor]) -> list[tuple[str, str]]:
    found = []
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            found.append((key, f"{int((~torch.isfinite(t)).sum())} of {t.numel()} values are NaN or Inf"))
    return found


def module_delta(state: Mapping[str, Tensor], module: str, scale: float) -> Tensor:
    """ΔW = s·B·A of one module as a float64 matrix (Conv2d kernels flattened)."""
    A = flat_lora_a(state[module + LORA_A_SUFFIX]).to(torch.float64)
    B = flat_lora_b(state[module + LORA_B_SUFFIX]).to(torch.float64)
    return scale * (B @ A)


def module_norm(state: Mapping[str, Tensor], module: str, scale: float) -> float:
    """||s·B·A||_F from the r x r Gram matrices, without forming B·A."""
    A = flat_lora_a(state[module + LORA_A_SUFFIX]).to(torch.float64)
    B = flat_lora_b(state[module + LORA_B_SUFFIX]).to(torch.float64)
    return abs(scale) * math.sqrt(max(((B.T @ B) * (A @ A.T)).sum().item(), 0.0))


def head_norm(state: Mapping[str, Tensor], task: str) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for k, t in state.items() if head_task_of(k) == task))


def _bounds_problems(sub: Submission, state: Mapping[str, Tensor], layout: AdapterLayout, s: ScreenSettings):
    problems = []
    for module, base in layout.base_norms.items():
        norm = module_norm(state, module, sub.scale)
        if norm > s.max_update_ratio * base:
            problems.append(
                (
                    module,
                    f"ΔW norm ||s·B·A|| = {norm:.4g} is {norm / base:.3g}x the pretrained weight's norm {base:.4g} "
                    f"(limit strategy.screen.max_update_ratio={s.max_update_ratio:g})",
                )
            )
    init = layout.head_init_norms.get(sub.task, 0.0)
    norm = head_norm(state, sub.task)
    if init > 0 and norm > s.max_head_ratio * init:
        problems.append(
            (
                f"heads.{sub.task}",
                f"head norm {norm:.4g} is {norm / init:.3g}x a freshly initialised head's {init:.4g} "
                f"(limit strategy.screen.max_head_ratio={s.max_head_ratio:g})",
            )
        )
    return problems


def _outlier_problems(norms: Mapping[int, float], factor: float, what: str) -> dict[int, tuple[str, str]]:
    """Hospitals whose norm exceeds `factor` x the median of the group (itself included)."""
    median = statistics.median(norms.values())
    found = {}
    for i, norm in norms.items():
        if norm > factor * median:
            ratio = "inf" if median == 0 else f"{norm / median:.1f}"
            found[i] = (
                what,
                f"norm {norm:.4g} is {ratio}x the median {median:.4g} of its task's hospitals (limit {factor:g}x)",
            )
    return found


def _task_group_screen(
    group: list[int],
    subs: Sequence[Submission],
    states: dict[int, dict[str, Tensor]],
    modules: list[str],
    s: ScreenSettings,
) -> tuple[dict[int, list[tuple[str, str]]], list[ScreenAction]]:
    """Step 4 for the hospitals of one task (at least MIN_MAJORITY): outlying norms, direction, clipping."""
    problems: dict[int, list[tuple[str, str]]] = {i: [] for i in group}
    actions: list[ScreenAction] = []
    task = subs[group[0]].task
    # norms, module by module, and the head
    for module in modules:
        norms = {i: module_norm(states[i], module, subs[i].scale) for i in group}
        for i, problem in _outlier_problems(norms, s.norm_factor, module).items():
            problems[i].append(problem)
    heads = {i: head_norm(states[i], task) for i in group}
    for i, problem in _outlier_problems(heads, s.norm_factor, f"heads.{task}").items():
        problems[i].append(problem)
    kept = [i for i in group if not problems[i]]
    if len(kept) < MIN_MAJORITY:
        return problems, actions
    # direction: each whole ΔW, scaled to unit norm (so no one's magnitude drags the reference), against
    # the coordinate-wise median of the task's unit ΔWs; too low in absolute terms or against the task's own spread
    if s.min_cosine is not None or s.min_relative_cosine is not None:
        units = {}
        for i in kept:
            delta = torch.cat([module_delta(states[i], m, subs[i].scale).flatten() for m in modules])
            norm = float(delta.norm())
            if norm > 0:  # a zero update moves nothing and has no direction
                units[i] = delta / norm
        if len(units) >= MIN_MAJORITY:
            median = torch.stack(list(units.values())).median(dim=0).values
            cosines = {i: float(torch.nn.functional.cosine_similarity(u, median, dim=0)) for i, u in units.items()}
            typical = statistics.median(cosines.values())
            for i, cosine in cosines.items():
                if s.min_cosine is not None and cosine <= s.min_cosine:
                    limit = f"strategy.screen.min_cosine={s.min_cosine:g}"
                elif s.min_relative_cosine is not None and cosine < s.min_relative_cosine * typical:
                    limit = f"strategy.screen.min_relative_cosine={s.min_relative_cosine:g} x the task's median cosine {typical:.3f}"
                else:
                    continue
                problems[i].append(
                    ("<ΔW>", f"points away from its task's median direction: cosine {cosine:.3f} (limit {limit})")
                )
            kept = [i for i in kept if not problems[i]]
    # clip each module's ΔW to clip_factor x the median norm
    if s.clip_factor is not None and len(kept) >= MIN_MAJORITY:
        for module in modules:
            norms = {i: module_norm(states[i], module, subs[i].scale) for i in kept}
            limit = s.clip_factor * statistics.median(norms.values())
            for i, norm in norms.items():
                if norm > limit > 0:
                    key = module + LORA_B_SUFFIX
                    states[i] = {**states[i], key: states[i][key] * (limit / norm)}
                    actions.append(
                        ScreenAction(
                            subs[i].hospital_id, "clipped", f"{module}: ΔW norm {norm:.4g} scaled to {limit:.4g}"
                        )
                    )
    return problems, actions


def screen_adapters(
    submissions: Sequence[Submission],
    layout: AdapterLayout,
    settings: ScreenSettings | None = None,
    stats: Sequence[str] = (),
) -> ScreenResult:
    """The adapters fit to merge (clipped where step 4 says so), a Rejection per problem, and what was changed.

    stats: the statistics the merge reads (`MergeMethod.stats`); each hospital's are screened after
    its adapter's values and bounds (`stats_screen`), then no Gram may dominate its solve.
    """
    s = settings or ScreenSettings()
    found: dict[int, list[tuple[str, str]]] = {i: [] for i in range(len(submissions))}
    states: dict[int, dict[str, Tensor]] = {}
    actions: list[ScreenAction] = []
    # 1. structure, against the server's layout
    for i, sub in enumerate(submissions):
        problems, dropped = _structure_problems(sub, layout)
        found[i] += problems
        states[i] = {k: t for k, t in sub.state.items() if k not in dropped}
        if dropped and not problems:
            tasks = sorted({head_task_of(k) for k in dropped})
            actions.append(
                ScreenAction(sub.hospital_id, "dropped", f"heads of tasks {tasks}: it trains {sub.task!r} only")
            )
    # 2. values, 3. absolute bounds
    for i, sub in enumerate(submissions):
        if not found[i]:
            found[i] += _nonfinite(states[i])
        if not found[i]:
            found[i] += _bounds_problems(sub, states[i], layout, s)
        if not found[i] and stats:
            found[i] += stats_problems(states[i], sub.stats, stats, s)
    if "gram" in stats:
        shares = gram_share_problems({i: submissions[i] for i in found if not found[i]}, s)
        for i, listed in shares.items():
            found[i] += listed
    # 4. relative, within each task that has a majority
    passed = [i for i in found if not found[i]]
    for task in dict.fromkeys(submissions[i].task for i in passed):
        group = [i for i in passed if submissions[i].task == task]
        if len(group) < MIN_MAJORITY:
            actions.append(
                ScreenAction(
                    None,
                    "no_majority",
                    f"task {task!r}: {len(group)} hospital(s), fewer than {MIN_MAJORITY}; screened against the "
                    "expected shapes and absolute bounds only (norm outliers, direction and clipping need a majority)",
                )
            )
            continue
        problems, clipped = _task_group_screen(group, submissions, states, layout.modules, s)
        for i, listed in problems.items():
            found[i] += listed
        actions += clipped
    accepted = [i for i in found if not found[i]]
    rejections = [Rejection(submissions[i].hospital_id, key, problem) for i in found for key, problem in found[i]]
    return ScreenResult(accepted, [states[i] for i in accepted], rejections, actions)
