"""Screen, weigh and merge hospital adapters as the run's `strategy` config says: one path for every caller.

`screen_weigh_merge` is the one pipeline (screen -> enough left? -> weigh -> merge -> versions) that
one-shot merging, resume, the benchmark floor and `scripts/attack.py` run, so what the poisoning
table measures is exactly what a run does; MedForge screens with `screen`. The math is in
`strategies.merging` (`validation.screen_adapters`, `weights.hospital_weights`, `adapters.merge_adapters`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

from flwr.common import log
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from fl_app.adapter_keys import non_lora_state
from fl_app.adapter_layout import AdapterLayout
from fl_app.failures import Failure
from fl_app.merge_stats import check_kinds
from fl_app.protocol import HospitalReply
from strategies.merging import (
    MergeResult,
    ScreenAction,
    ScreenSettings,
    Submission,
    get_merge_method,
    hospital_weights,
    merge_hospital_adapters,
    merged_update_problems,
    screen_adapters,
)
from strategies.merging.consensus import weight_shares
from strategies.outcome import ModelVersion, merged_version
from strategies.replies import require_enough


def expected_layout(cfg: DictConfig | Mapping[str, Any]) -> AdapterLayout:
    """The adapter the experiment's hospitals must send, from the classifier the server builds as they do."""
    from fl_app.hospital_steps import task_outputs  # the model stack, loaded only when a strategy screens
    from fl_app.model.layout import adapter_layout

    experiment = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return adapter_layout(experiment["model"], experiment["lora"], task_outputs(experiment))


def screen_settings(strategy: Mapping[str, Any]) -> ScreenSettings:
    screen = strategy.get("screen")
    return ScreenSettings.from_config(OmegaConf.to_container(screen) if isinstance(screen, DictConfig) else screen)


def max_share(strategy: Mapping[str, Any]) -> float | None:
    """`strategy.robust.max_share`: the largest share of the merge weight one hospital's reported count can buy."""
    robust = strategy.get("robust") or {}
    value = robust.get("max_share")
    return None if value is None else float(value)


def submission(hospital: HospitalReply) -> Submission:
    return Submission(
        hospital.hospital_id, hospital.task, hospital.state, hospital.lora_r, hospital.lora_alpha, hospital.stats
    )


def merge_stats_kinds(strategy: Mapping[str, Any]) -> tuple[str, ...]:
    """The statistics the configured merge reads (screened), e.g. ('gram',) for regmean; () for data-free ones."""
    name = strategy.get("merge")
    kind = get_merge_method(str(name)).stats if name is not None else None  # a strategy without `merge` reads none
    return (kind,) if kind else ()


def requested_stats(strategy: Mapping[str, Any]) -> tuple[str, ...]:
    """The statistics hospitals are asked for: what the merge reads plus `strategy.stats` (kept for re-merging)."""
    return check_kinds([*merge_stats_kinds(strategy), *(strategy.get("stats") or [])])


class MergeRefused(ValueError):
    """A merged update far outside what its inputs can make: the version is refused, not saved."""


def screen(
    hospitals: Sequence[HospitalReply], layout: AdapterLayout, strategy: Mapping[str, Any], server_round: int = 1
) -> tuple[list[HospitalReply], list[Failure], list[ScreenAction]]:
    """The hospitals fit to merge (their states as screened: clipped, foreign heads dropped), a failure per problem, the changes made."""
    accepted, failures, actions, _ = screen_with_parties(hospitals, layout, strategy, server_round)
    return accepted, failures, actions


def screen_with_parties(
    hospitals: Sequence[HospitalReply], layout: AdapterLayout, strategy: Mapping[str, Any], server_round: int = 1
) -> tuple[list[HospitalReply], list[Failure], list[ScreenAction], list[list[int]]]:
    """`screen`, plus the groups of accepted hospitals that sent near-identical adapters (one party each)."""
    result = screen_adapters(
        [submission(h) for h in hospitals], layout, screen_settings(strategy), merge_stats_kinds(strategy)
    )
    accepted = [dataclasses.replace(hospitals[i], state=state) for i, state in zip(result.accepted, result.states)]
    by_id = {h.hospital_id: h for h in hospitals}
    failures = [
        Failure(
            r.hospital_id,
            "screen",
            str(r),
            node_id=by_id[r.hospital_id].node_id,
            round=server_round,
            tensor=r.key,
            problem=r.problem,
        )
        for r in result.rejections
    ]
    for failure in failures:
        log(WARNING, "Adapter rejected before merging: %s", failure.error)
    for action in result.actions:
        who = "the federation" if action.hospital_id is None else f"hospital {action.hospital_id}"
        log(WARNING, "Screening (%s, %s): %s", who, action.action, action.detail)
    return accepted, failures, result.actions, result.parties


def same_rank_failures(
    hospitals: Sequence[HospitalReply], strategy: Mapping[str, Any], server_round: int = 1
) -> tuple[list[HospitalReply], list[Failure]]:
    """A method that averages the factors (`same_rank`) gets the hospitals at the most common rank (a tie:
    the lowest); each other one is left out with a named reason instead of failing the whole merge."""
    if not hospitals or not get_merge_method(str(strategy["merge"])).same_rank:
        return list(hospitals), []
    counts: dict[int, int] = {}
    for h in hospitals:
        counts[h.lora_r] = counts.get(h.lora_r, 0) + 1
    rank = min(counts, key=lambda r: (-counts[r], r))
    failures = [
        Failure(
            h.hospital_id,
            "screen",
            f"hospital {h.hospital_id}: <lora-r>: rank {h.lora_r}, but merge={strategy['merge']} averages A and B "
            f"separately and needs one rank; the others are at rank {rank}. Left out of this merge (task_arithmetic, "
            "ties or knots merge mixed ranks exactly)",
            node_id=h.node_id,
            round=server_round,
            tensor="<lora-r>",
            problem="rank differs from the merge's",
        )
        for h in hospitals
        if h.lora_r != rank
    ]
    for failure in failures:
        log(WARNING, "Adapter left out of the merge: %s", failure.error)
    return [h for h in hospitals if h.lora_r == rank], failures


def refuse_amplified(
    merged: Mapping[str, Tensor],
    hospitals: Sequence[HospitalReply],
    weights: Sequence[float],
    strategy: Mapping[str, Any],
) -> None:
    """Raise `MergeRefused` when a merged module's ΔW (scale 1) is far beyond what its inputs can sum to."""
    settings = screen_settings(strategy)
    problems = merged_update_problems(
        merged,
        [submission(h) for h in hospitals],
        weights,
        float(strategy.get("scale", 1.0)),
        settings.max_merged_ratio * (get_merge_method(str(strategy["merge"])).reach if "merge" in strategy else 1.0),
    )
    if problems:
        module, problem = problems[0]
        raise MergeRefused(
            f"merge={strategy.get('merge', 'fedavg')} over hospitals {[h.hospital_id for h in hospitals]}: "
            f"{len(problems)} module(s) amplified, e.g. {module}: {problem}"
        )


def weigh(
    hospitals: Sequence[HospitalReply], strategy: Mapping[str, Any], parties: Sequence[Sequence[int]] = ()
) -> list[float]:
    """Each hospital's merge weight under `strategy.weighting`, capped by `strategy.robust.max_share`;
    hospitals of one party (`parties`: near-identical adapters) share one hospital's weight."""
    ids, counts, weighting = (
        [h.hospital_id for h in hospitals],
        [h.n_train for h in hospitals],
        str(strategy["weighting"]),
    )
    weights = hospital_weights(ids, counts, weighting, strategy.get("weights"), max_share=max_share(strategy))
    uncapped = hospital_weights(ids, counts, weighting, strategy.get("weights"))
    if weights != uncapped:
        log(
            WARNING,
            "Merge weights capped at strategy.robust.max_share=%s: %s instead of %s (reported n-train %s)",
            max_share(strategy),
            [round(w, 3) for w in weights],
            [round(w, 3) for w in uncapped],
            counts,
        )
    if parties:
        shares = weight_shares(ids, parties)
        shared = [w * share for w, share in zip(weights, shares)]
        total, kept = sum(weights), sum(shared)
        weights = [w * total / kept for w in shared] if kept else shared
        log(WARNING, "Hospitals %s are one party each: they share one hospital's weight", [list(p) for p in parties])
    return weights


def merge_hospitals(
    hospitals: Sequence[HospitalReply], weights: Sequence[float], strategy: Mapping[str, Any]
) -> MergeResult:
    """The configured merge of the hospitals' adapters (`strategy` is the experiment's strategy group)."""
    rank = strategy.get("merge_rank")
    return merge_hospital_adapters(
        hospitals,
        weights,
        method=str(strategy["merge"]),
        scale=float(strategy.get("scale", 1.0)),
        rank=None if rank is None else int(rank),
        params=dict(strategy.get("merge_params") or {}),
    )


@dataclass
class ScreenedMerge:
    """What `screen_weigh_merge` made of one round's adapters."""

    hospitals: list[HospitalReply]  # merged, their states as screened
    failures: list[Failure]  # the screen's rejections
    actions: list[ScreenAction]  # the screen's changes (clipped, foreign heads dropped)
    weights: list[float]
    result: MergeResult
    parties: list[list[int]] = dataclasses.field(default_factory=list)  # near-identical adapters, one party each

    def version(self, name: str, **extra: Any) -> ModelVersion:
        """The merge as a version named `name`, with its provenance (`extra`: label, ...)."""
        return merged_version(name, self.result, [h.hospital_id for h in self.hospitals], self.weights, **extra)

    def versions(self) -> list[ModelVersion]:
        """A one-shot round's versions: each hospital's own adapter (heads of other tasks from the
        merge, so every task can be scored) and the merge, `merged`."""
        merged_heads = non_lora_state(self.result.state)
        versions = [
            ModelVersion(
                name=f"hospital-{h.hospital_id}",
                kind="hospital",
                state={**merged_heads, **h.state},
                r=h.lora_r,
                alpha=h.lora_alpha,
                details={"hospital": h.hospital_id, "task": h.task},
                stats=h.stats,
            )
            for h in self.hospitals
        ]
        return [*versions, self.version("merged")]


def screen_weigh_merge(
    hospitals: Sequence[HospitalReply],
    strategy: Mapping[str, Any],
    layout: AdapterLayout | None,
    server_round: int = 1,
    minimum: int = 1,
    on_screened: Callable[[list[HospitalReply], list[Failure], list[ScreenAction]], None] | None = None,
) -> ScreenedMerge:
    """The one pipeline: screen against `layout` (None: not screened), leave out what the method cannot
    take (`same_rank`), stop unless `minimum` remain (`NotEnoughHospitals`; `on_screened` hears the
    screen's verdict first), weigh, merge, and refuse a merge far outside its inputs (`MergeRefused`)."""
    if layout is None:
        accepted, failures, actions, parties = list(hospitals), [], [], []
    else:
        accepted, failures, actions, parties = screen_with_parties(hospitals, layout, strategy, server_round)
    accepted, left_out = same_rank_failures(accepted, strategy, server_round)
    failures = failures + left_out
    if on_screened is not None:
        on_screened(accepted, failures, actions)
    require_enough(accepted, failures, minimum, server_round)
    weights = weigh(accepted, strategy, parties)
    log(
        INFO,
        "Merging %d adapters with %s (weights %s)",
        len(accepted),
        strategy["merge"],
        [round(w, 3) for w in weights],
    )
    result = merge_hospitals(accepted, weights, strategy)
    if layout is not None:
        refuse_amplified(result.state, accepted, weights, strategy)
    return ScreenedMerge(accepted, failures, actions, weights, result, parties)
