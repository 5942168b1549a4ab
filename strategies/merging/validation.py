"""Screen hospital adapters before a merge, against the server's own expectation first, then each other.

Pure: submissions in, the accepted ones (possibly clipped) and the reason for every rejection out.
Order of the checks, each on the hospitals still accepted:

1. structure, against the server's `AdapterLayout` (never against "the majority"): the task is one
   of the experiment's; exactly the expected LoRA keys with the expected shapes (any rank, equal
   to the reported lora-r) and dtype; the hospital's own head; heads of other tasks are dropped;
2. values: finite everywhere;
3. absolute bounds, with any number of hospitals: a module's ||s·B·A|| at most `max_update_ratio`
   x the norm of the pretrained weight it adapts; a head's norm at most `max_head_ratio` x a freshly
   initialised head's; an adapter whose ΔW is zero in every module, or whose head is zero, is no
   contribution (it would dilute the merge and drag the typical norm to 0) and is rejected;
4. among hospitals of the same task: near-identical adapters from distinct hospitals are one party
   (`duplicate_tolerance`; recorded, one vote, one hospital's weight shared: `consensus`). Only when
   the task has at least `MIN_MAJORITY` parties (with fewer there is no majority to speak for the
   task, and the record says so): a module's ΔW norm above `norm_factor` x the task's median
   (of the non-zero norms) is rejected, and a head likewise; an adapter whose whole ΔW, or whose
   head, points away from the task's median direction (the coordinate-wise median of the parties'
   unit vectors) is rejected: cosine <= `min_cosine`, or below `min_relative_cosine` x the task's
   median cosine, unless that would evict half or more of the parties (a tie evicts no one);
   a module's ΔW, and a head, above `clip_factor` x the median is scaled down to it (Sun et al.
   2019, "Can you really backdoor federated learning?", norm bounding);
5. the factors themselves, across every hospital still accepted (merges such as `fedit` and FedAvg
   average A and B, not ΔW, so a ΔW that passed can still carry a re-factored B·c, A/c or an extreme
   lora-alpha): the singular values of sqrt(s)·A outside `norm_factor` x the median, either way, reject.

For a data-aware merge (RegMean, Fisher) the statistics it reads are screened after step 3
(`stats_screen.py`: shape, finite, symmetric PSD, bounded; no dominating Gram).

After the merge, `merged_update_problems` refuses a merged ΔW far outside its inputs' range.
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
from strategies.merging.consensus import (
    direction_outliers,
    duplicate_parties,
    is_tie,
    median_direction_cosines,
    party_of,
)
from strategies.merging.stats_screen import gram_share_problems, stats_problems

MIN_MAJORITY = 3  # parties of one task needed before the others can outvote one of them
NEGLIGIBLE = 1e-9  # a norm below this x its reference (pretrained weight, fresh head) counts as zero


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
    duplicate_tolerance: float | None = 1e-3  # relative distance under which two adapters are one party
    max_merged_ratio: float = 10.0  # a merged module's ΔW norm at most this x what its inputs can sum to

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
            "max_merged_ratio",
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
        if self.duplicate_tolerance is not None and not (
            math.isfinite(self.duplicate_tolerance) and 0 <= self.duplicate_tolerance < 1
        ):
            raise ValueError(
                f"strategy.screen.duplicate_tolerance must be null or in [0, 1), got {self.duplicate_tolerance}"
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
    parties: list[list[int]] = field(default_factory=list)  # hospital ids of accepted near-identical adapters


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
    norms = {module: module_norm(state, module, sub.scale) for module in layout.base_norms}
    for module, base in layout.base_norms.items():
        if norms[module] > s.max_update_ratio * base:
            problems.append(
                (
                    module,
                    f"ΔW norm ||s·B·A|| = {norms[module]:.4g} is {norms[module] / base:.3g}x the pretrained weight's "
                    f"norm {base:.4g} (limit strategy.screen.max_update_ratio={s.max_update_ratio:g})",
                )
            )
    if norms and all(norms[m] <= NEGLIGIBLE * base for m, base in layout.base_norms.items()):
        problems.append(
            (
                "<ΔW>",
                "zero in every LoRA module: an adapter that changes nothing (untrained or withheld) is no "
                "contribution; it would dilute the merge and drag its task's typical norm to 0",
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
    elif init > 0 and norm <= NEGLIGIBLE * init:
        problems.append((f"heads.{sub.task}", "the head is zero: it classifies nothing"))
    return problems


def _outlier_problems(norms: Mapping[int, float], factor: float, what: str, floor: float) -> dict[int, tuple[str, str]]:
    """Hospitals whose norm exceeds `factor` x the median of the group's norms above `floor` (zero ones
    do nothing and must not define what normal looks like)."""
    counted = [n for n in norms.values() if n > floor]
    if not counted:
        return {}
    median = statistics.median(counted)
    return {
        i: (
            what,
            f"norm {norm:.4g} is {norm / median:.1f}x the median {median:.4g} of its task's hospitals (limit {factor:g}x)",
        )
        for i, norm in norms.items()
        if norm > factor * median
    }


def _flat_update(state: Mapping[str, Tensor], modules: Sequence[str], scale: float) -> Tensor:
    return torch.cat([module_delta(state, m, scale).flatten() for m in modules])


def _flat_head(state: Mapping[str, Tensor], task: str) -> Tensor:
    return torch.cat([t.double().flatten() for k, t in sorted(state.items()) if head_task_of(k) == task])


def _direction_screen(
    vectors: Mapping[int, Tensor], party: Mapping[int, int], s: ScreenSettings, what: str, key: str, task: str
) -> tuple[dict[int, tuple[str, str]], list[ScreenAction]]:
    """Direction check of one quantity (the whole ΔW, or the head) among a task's hospitals."""
    units = {i: v / v.norm() for i, v in vectors.items() if float(v.norm()) > 0}  # zero has no direction
    voters = list({party[i]: i for i in reversed(list(units))}.values())  # one per party: its first member
    if len(voters) < MIN_MAJORITY or (s.min_cosine is None and s.min_relative_cosine is None):
        return {}, []
    cosines = median_direction_cosines(units, voters)
    flagged = direction_outliers(cosines, voters, s.min_cosine, s.min_relative_cosine)
    if flagged and is_tie(list(flagged), voters, party):
        detail = (
            f"task {task!r}: the {what} of {len(flagged)} hospital(s) point away from the others, which is half or "
            f"more of its {len(voters)} parties: no majority, none rejected on direction (cosines "
            f"{ {i: round(c, 3) for i, c in cosines.items()} })"
        )
        return {}, [ScreenAction(None, "direction_tie", detail)]
    return {
        i: (key, f"{what} points away from its task's median direction: cosine {cosines[i]:.3f} (limit {limit})")
        for i, limit in flagged.items()
    }, []


def _task_group_screen(
    group: list[int],
    subs: Sequence[Submission],
    states: dict[int, dict[str, Tensor]],
    updates: Mapping[int, Tensor],
    layout: AdapterLayout,
    party: Mapping[int, int],
    s: ScreenSettings,
) -> tuple[dict[int, list[tuple[str, str]]], list[ScreenAction]]:
    """Step 4 for the hospitals of one task (at least MIN_MAJORITY parties): outlying norms, directions, clipping."""
    problems: dict[int, list[tuple[str, str]]] = {i: [] for i in group}
    actions: list[ScreenAction] = []
    task = subs[group[0]].task
    modules = layout.modules
    # norms, module by module, and the head
    for module in modules:
        norms = {i: module_norm(states[i], module, subs[i].scale) for i in group}
        floor = NEGLIGIBLE * layout.base_norms.get(module, 0.0)
        for i, problem in _outlier_problems(norms, s.norm_factor, module, floor).items():
            problems[i].append(problem)
    heads = {i: head_norm(states[i], task) for i in group}
    head_floor = NEGLIGIBLE * layout.head_init_norms.get(task, 0.0)
    for i, problem in _outlier_problems(heads, s.norm_factor, f"heads.{task}", head_floor).items():
        problems[i].append(problem)
    kept = [i for i in group if not problems[i]]
    # direction: the whole ΔW and the head, each scaled to unit norm (so no one's magnitude drags the
    # reference), against the coordinate-wise median of the parties' unit vectors
    for what, key, vector in (
        ("ΔW", "<ΔW>", lambda i: updates[i]),
        ("head", f"heads.{task}", lambda i: _flat_head(states[i], task)),
    ):
        found, tie = _direction_screen({i: vector(i) for i in kept}, party, s, what, key, task)
        actions += tie
        for i, problem in found.items():
            problems[i].append(problem)
    kept = [i for i in kept if not problems[i]]
    if s.clip_factor is not None and len({party[i] for i in kept}) >= MIN_MAJORITY:
        actions += _clip(kept, subs, states, layout, s.clip_factor)
    return problems, actions


def _clip(
    kept: list[int],
    subs: Sequence[Submission],
    states: dict[int, dict[str, Tensor]],
    layout: AdapterLayout,
    factor: float,
) -> list[ScreenAction]:
    """Scale each module's ΔW, and each head, down to `factor` x the task's median norm."""
    actions = []
    task = subs[kept[0]].task
    for module in layout.modules:
        norms = {i: module_norm(states[i], module, subs[i].scale) for i in kept}
        limit = factor * statistics.median(norms.values())
        for i, norm in norms.items():
            if norm > limit > 0:
                key = module + LORA_B_SUFFIX
                states[i] = {**states[i], key: states[i][key] * (limit / norm)}
                detail = f"{module}: ΔW norm {norm:.4g} scaled to {limit:.4g}"
                actions.append(ScreenAction(subs[i].hospital_id, "clipped", detail))
    norms = {i: head_norm(states[i], task) for i in kept}
    limit = factor * statistics.median(norms.values())
    for i, norm in norms.items():
        if norm > limit > 0:
            states[i] = {k: (t * (limit / norm) if head_task_of(k) == task else t) for k, t in states[i].items()}
            actions.append(
                ScreenAction(subs[i].hospital_id, "clipped", f"heads.{task}: norm {norm:.4g} scaled to {limit:.4g}")
            )
    return actions


def a_spectrum(state: Mapping[str, Tensor], module: str, scale: float) -> tuple[float, float]:
    """(smallest, largest) singular value of sqrt(s)·A: the factor a merge of factors (fedit, FedAvg) reads.

    Since ΔW = s·B·A fixes B once A is given (B = ΔW·A⁺/s), an A whose spectrum is that of a fresh
    init bounds B by the ΔW the screen already bounds; a re-factored B·c, A/c (or B·M, M⁻¹·A) or an
    extreme lora-alpha moves this spectrum instead."""
    A = flat_lora_a(state[module + LORA_A_SUFFIX]).double()
    values = torch.linalg.svdvals(A) * math.sqrt(abs(scale))
    return float(values.min()), float(values.max())


def _factor_problems(
    accepted: list[int],
    subs: Sequence[Submission],
    states: Mapping[int, Mapping[str, Tensor]],
    layout: AdapterLayout,
    s: ScreenSettings,
) -> dict[int, list[tuple[str, str]]]:
    """Step 5: sqrt(s)·A's spectrum within `norm_factor` either way of the median over the accepted
    hospitals (all tasks: factor merges mix them; A starts from one seeded init everywhere)."""
    found: dict[int, list[tuple[str, str]]] = {i: [] for i in accepted}
    if len(accepted) < MIN_MAJORITY:
        return found
    for module in layout.modules:
        spectra = {i: a_spectrum(states[i], module, subs[i].scale) for i in accepted}
        low = statistics.median(lo for lo, _ in spectra.values())
        high = statistics.median(hi for _, hi in spectra.values())
        for i, (lo, hi) in spectra.items():
            if hi > s.norm_factor * high or lo * s.norm_factor < low:
                found[i].append(
                    (
                        module + LORA_A_SUFFIX,
                        f"singular values of sqrt(s)·A in [{lo:.3g}, {hi:.3g}], the median over the hospitals merged "
                        f"[{low:.3g}, {high:.3g}] (limit strategy.screen.norm_factor={s.norm_factor:g}x either way): a "
                        "re-factored B·c, A/c or an extreme lora-alpha, which merges that average A and B (fedit, "
                        "FedAvg) would amplify",
                    )
                )
    return found


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
    # 4. relative, within each task: parties first, then the checks that need a majority of them
    passed = [i for i in found if not found[i]]
    parties: list[list[int]] = []
    for task in dict.fromkeys(submissions[i].task for i in passed):
        group = [i for i in passed if submissions[i].task == task]
        # each hospital's dense ΔW, once per task: the duplicate check and the direction vote both read it
        updates = (
            {i: _flat_update(states[i], layout.modules, submissions[i].scale) for i in group} if len(group) > 1 else {}
        )
        task_parties = _parties(group, submissions, states, updates, s)
        parties += task_parties
        for members in task_parties:
            ids = [submissions[i].hospital_id for i in members]
            actions.append(
                ScreenAction(
                    None,
                    "duplicates",
                    f"task {task!r}: hospitals {ids} sent near-identical adapters (relative distance <= "
                    f"strategy.screen.duplicate_tolerance={s.duplicate_tolerance:g}): one party behind several nodes? "
                    "They count as one in the direction vote and share one hospital's merge weight",
                )
            )
        party = party_of(group, task_parties)
        if len(set(party.values())) < MIN_MAJORITY:
            actions.append(
                ScreenAction(
                    None,
                    "no_majority",
                    f"task {task!r}: {len(set(party.values()))} party(ies), fewer than {MIN_MAJORITY}; screened against "
                    "the expected shapes and absolute bounds only (norm outliers, direction and clipping need a majority)",
                )
            )
            continue
        problems, changed = _task_group_screen(group, submissions, states, updates, layout, party, s)
        for i, listed in problems.items():
            found[i] += listed
        actions += changed
    # 5. the factors, across every hospital still accepted
    for i, listed in _factor_problems([i for i in found if not found[i]], submissions, states, layout, s).items():
        found[i] += listed
    accepted = [i for i in found if not found[i]]
    rejections = [Rejection(submissions[i].hospital_id, key, problem) for i in found for key, problem in found[i]]
    kept_parties = [
        [submissions[i].hospital_id for i in members if i in accepted]
        for members in parties
        if sum(i in accepted for i in members) > 1
    ]
    return ScreenResult(accepted, [states[i] for i in accepted], rejections, actions, kept_parties)


def _parties(
    group: list[int],
    subs: Sequence[Submission],
    states: Mapping[int, Mapping[str, Tensor]],
    updates: Mapping[int, Tensor],
    s: ScreenSettings,
) -> list[list[int]]:
    """Near-identical adapters (ΔW and head together) among one task's hospitals (`updates`: their dense ΔWs)."""
    if s.duplicate_tolerance is None or len(group) < 2:
        return []
    task = subs[group[0]].task
    vectors = {i: torch.cat([updates[i], _flat_head(states[i], task)]) for i in group}
    return duplicate_parties(vectors, s.duplicate_tolerance)


def merged_update_problems(
    merged: Mapping[str, Tensor],
    inputs: Sequence[Submission],
    weights: Sequence[float],
    scale: float,
    max_ratio: float,
) -> list[tuple[str, str]]:
    """Modules whose merged ΔW (scale 1, as `merge_adapters` returns it) exceeds `max_ratio` x the
    largest update its inputs can make: |scale| x max(1, max |w_i|) x Σ ||s_i·B_i·A_i||. Every linear
    merge stays within 1x of it, TIES within 1x, DARE within 1/sqrt(density)x; an amplified result
    means the method read something the screen did not check, and is refused, not saved."""
    reach = abs(scale) * max([1.0, *(abs(w) for w in weights)])
    modules = list(dict.fromkeys(k[: -len(LORA_A_SUFFIX)] for k in merged if k.endswith(LORA_A_SUFFIX)))
    found = []
    for module in modules:
        bound = reach * sum(module_norm(sub.state, module, sub.scale) for sub in inputs)
        norm = module_norm(merged, module, 1.0)
        if norm > max_ratio * bound:
            ratio = "inf" if bound == 0 else f"{norm / bound:.3g}"
            found.append(
                (
                    module,
                    f"merged ΔW norm {norm:.4g} is {ratio}x the most its inputs can sum to ({bound:.4g}; limit "
                    f"strategy.screen.max_merged_ratio={max_ratio:g}): refused, not saved",
                )
            )
    return found
