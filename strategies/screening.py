"""Screen and weigh hospital adapters as the run's `strategy` config says: one path for every strategy.

One-shot merging, MedForge, the benchmark floor and `scripts/attack.py` call these, so what the
poisoning table measures is exactly what a run does. The math is in `strategies.merging`
(`validation.screen_adapters`, `weights.hospital_weights`, `adapters.merge_adapters`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from logging import WARNING
from typing import Any

from flwr.common import log
from omegaconf import DictConfig, OmegaConf

from fl_app.adapter_layout import AdapterLayout
from fl_app.failures import Failure
from fl_app.protocol import HospitalReply
from strategies.merging import (
    MergeResult,
    ScreenAction,
    ScreenSettings,
    Submission,
    hospital_weights,
    merge_adapters,
    screen_adapters,
)


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
    return Submission(hospital.hospital_id, hospital.task, hospital.state, hospital.lora_r, hospital.lora_alpha)


def screen(
    hospitals: Sequence[HospitalReply], layout: AdapterLayout, strategy: Mapping[str, Any], server_round: int = 1
) -> tuple[list[HospitalReply], list[Failure], list[ScreenAction]]:
    """The hospitals fit to merge (their states as screened: clipped, foreign heads dropped), a failure per problem, the changes made."""
    result = screen_adapters([submission(h) for h in hospitals], layout, screen_settings(strategy))
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
        log(WARNING, "Adapter rejected before merging: %s", failure.reason)
    for action in result.actions:
        log(WARNING, "Screening: hospital %s %s: %s", action.hospital_id, action.action, action.detail)
    return accepted, failures, result.actions


def weigh(hospitals: Sequence[HospitalReply], strategy: Mapping[str, Any]) -> list[float]:
    """Each hospital's merge weight under `strategy.weighting`, capped by `strategy.robust.max_share`."""
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
    return weights


def merge_hospitals(
    hospitals: Sequence[HospitalReply], weights: Sequence[float], strategy: Mapping[str, Any]
) -> MergeResult:
    """The configured merge of the hospitals' adapters (`strategy` is the experiment's strategy group)."""
    rank = strategy.get("merge_rank")
    return merge_adapters(
        [h.state for h in hospitals],
        scales=[h.lora_scale for h in hospitals],
        weights=weights,
        tasks=[h.task for h in hospitals],
        method=str(strategy["merge"]),
        scale=float(strategy.get("scale", 1.0)),
        rank=None if rank is None else int(rank),
        params=dict(strategy.get("merge_params") or {}),
    )
