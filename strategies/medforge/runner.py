"""MedForge on a Flower Grid: hospitals train once and commit adapter + calibration set; the main
branch merges each arrival (asynchronous progressive merging), then everyone at once (one-shot).

Arrival order: `arrival` merges replies in the order they are pulled from the Grid (push/pull,
no waiting for the slowest hospital); `configured` follows `strategy.arrival_order`; `random` is a
permutation seeded by the experiment seed. Data-free merges of the same adapters (`baselines`)
are added so one run compares MedForge with them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Sequence
from logging import INFO, WARNING
from typing import Any

from flwr.app import Message, RecordDict
from flwr.common import log
from omegaconf import DictConfig, OmegaConf

from fl_app.calibration import CalibrationSet, decode_calibration
from fl_app.failures import Failure
from fl_app.protocol import CONFIG, HOSPITAL, HospitalReply, instructions
from strategies.medforge.branches import FusionBranch, MixtureBranch, task_heads
from strategies.medforge.federated import FederatedSearch
from strategies.medforge.scoring import CalibrationScorer
from strategies.medforge.settings import federated_settings, search_settings
from strategies.merging import hospital_weights, merge_adapters
from strategies.outcome import ModelVersion, StrategyOutcome, merged_version
from strategies.replies import RoundSink, collect_replies, require_enough, train_messages, train_timeout
from strategies.screening import expected_layout, screen


def medforge_messages(grid: Any, experiment_json: str, strategy: DictConfig) -> list[Message]:
    """One train message per node online asking for an adapter, and a calibration set when the search uses them."""
    extra: dict[str, Any] = {"server-round": 1}
    if uses_calibration_sets(strategy):
        extra["calibration"] = json.dumps(OmegaConf.to_container(strategy.calibration, resolve=True))
    return train_messages(grid, strategy, 1, RecordDict({CONFIG: instructions(experiment_json, **extra)}))


def uses_calibration_sets(strategy: DictConfig) -> bool:
    """Calibration sets are distilled only for a search on them (`search.source: calibration`)."""
    return str(strategy.search.get("source", "calibration")) == "calibration"


def data_free_weights(hospitals: Sequence[HospitalReply], strategy: DictConfig) -> list[float]:
    """The weights of the run's data-free baselines (`strategy.weighting`): a search's `data_free` start."""
    return hospital_weights(
        [h.hospital_id for h in hospitals], [h.n_train for h in hospitals], str(strategy.get("weighting", "uniform"))
    )


def arrival_order(hospital_ids: Sequence[int], strategy: DictConfig, seed: int) -> list[int]:
    """The order in which delivered hospitals are merged (for `configured` and `random`)."""
    if strategy.order == "random":
        order = sorted(hospital_ids)
        random.Random(seed).shuffle(order)
        return order
    configured = [int(h) for h in strategy.arrival_order or []]
    missing = sorted(set(hospital_ids) - set(configured))
    if missing:
        log(
            WARNING,
            "strategy.arrival_order %s does not list hospital(s) %s; they arrive last, by id.",
            configured,
            missing,
        )
    return [h for h in configured if h in hospital_ids] + missing


def ordered_replies(grid: Any, messages: list[Message], strategy: DictConfig, seed: int) -> Iterator[Message]:
    """Replies in merge order: as pulled (`arrival`), or all collected then ordered; errors first.
    Hospitals that have not replied by `strategy.train_timeout_s` are failures (timeout)."""
    if strategy.order == "arrival":
        yield from grid.replies_as_they_arrive(messages, timeout=train_timeout(strategy))
        return
    replies = grid.send_and_receive(messages, timeout=train_timeout(strategy))
    failed = [r for r in replies if r.has_error() or HOSPITAL not in r.content]
    good = {int(r.content[HOSPITAL]["hospital-id"]): r for r in replies if r not in failed}
    yield from failed
    yield from (good[h] for h in arrival_order(list(good), strategy, seed))


def calibration_summary(calibration: CalibrationSet) -> dict[str, Any]:
    return {
        "task": calibration.task,
        "images": len(calibration.labels),
        "init": calibration.init,
        "privacy_risk": calibration.privacy_risk,
        "matching_loss_before": calibration.loss_before,
        "matching_loss_after": calibration.loss_after,
        "seconds": calibration.seconds,
    }


def run_medforge(grid: Any, cfg: DictConfig, experiment_json: str, sink: RoundSink) -> StrategyOutcome:
    """Train once, merge progressively and at once; versions: hospitals, v1..vN per method, one-shot, baselines."""
    strategy, seed = cfg.strategy, int(cfg.seed)
    started = time.perf_counter()
    calibrated = uses_calibration_sets(strategy)
    scorer = CalibrationScorer(json.loads(experiment_json)) if calibrated else None
    search = search_settings(strategy, seed)
    profile: dict[str, float] = {"server_setup": time.perf_counter() - started}
    branches = {
        "fusion": FusionBranch(scorer, search, str(strategy.level), str(strategy.form)),
        "mixture": MixtureBranch(scorer, search),
    }
    branches = {name: branches[name] for name in strategy.methods}
    delivered: list[HospitalReply] = []
    failures: list[Failure] = []
    progressive: dict[str, list[ModelVersion]] = {name: [] for name in branches}
    calibration: dict[str, Any] = {}
    screening: list[dict[str, Any]] = []
    layout = expected_layout(cfg)
    messages = medforge_messages(grid, experiment_json, strategy)
    training_started = time.perf_counter()
    progressive_seconds = 0.0
    for reply in ordered_replies(grid, messages, strategy, seed):
        bound = {**sink.bound_nodes(), **{h.node_id: h.hospital_id for h in delivered}}
        hospitals, failed = collect_replies([reply], 1, bound)
        calibration_set = decode_calibration(reply.content) if hospitals and calibrated else None
        if hospitals and calibrated and calibration_set is None:
            failed = [
                Failure(
                    hospitals[0].hospital_id,
                    "train",
                    "the reply carries no calibration set",
                    node_id=reply.metadata.src_node_id,
                    round=1,
                )
            ]
        if failed:
            failures += failed
            log(WARNING, "Hospital %s failed and is left out: %s", failed[0].hospital_id, failed[0].error)
            continue
        hospital = hospitals[0]
        # screened against the adapters merged so far (same task) and the server's layout; only the arrival is judged
        accepted, rejections, actions = screen([*delivered, hospital], layout, strategy)
        if rejected := [r for r in rejections if r.hospital_id == hospital.hospital_id]:
            failures += rejected
            continue
        hospital = next(
            h for h in accepted if h.hospital_id == hospital.hospital_id
        )  # as screened (clipped, foreign heads dropped)
        screening += [a.as_dict() for a in actions if a.hospital_id == hospital.hospital_id]
        delivered.append(hospital)
        if calibrated:
            scorer.add(hospital.hospital_id, calibration_set)
            calibration[str(hospital.hospital_id)] = calibration_summary(calibration_set)
        if strategy.progressive:
            merging = time.perf_counter()
            for name, branch in branches.items():
                progressive[name].append(branch.arrive(hospital, len(delivered)))
            progressive_seconds += time.perf_counter() - merging
            log(INFO, "Main branch v%d: hospital %d (%s) merged", len(delivered), hospital.hospital_id, hospital.task)
    profile["training"] = time.perf_counter() - training_started - progressive_seconds
    profile["progressive_search_and_merge"] = progressive_seconds
    profile["distillation_at_hospitals"] = sum(float(c["seconds"]) for c in calibration.values())
    profile["hospitals_train_and_distil"] = sum(float(h.metrics.get("step-seconds", 0.0)) for h in delivered)
    sink.record_round(1, sorted(delivered, key=lambda h: h.hospital_id), failures)
    require_enough(delivered, failures, int(strategy.min_hospitals), 1)
    by_id = sorted(delivered, key=lambda h: h.hospital_id)
    heads = task_heads(by_id)
    versions = [
        ModelVersion(
            f"hospital-{h.hospital_id}",
            "hospital",
            {**heads, **h.state},  # its own LoRA and head; other tasks' heads from the merge (as one_shot does)
            h.lora_r,
            h.lora_alpha,
            {"hospital": h.hospital_id, "task": h.task},
        )
        for h in by_id
    ]
    for name in branches:
        versions += progressive[name]
    federated = None
    if strategy.one_shot:
        one_shot_started = time.perf_counter()
        start = data_free_weights(by_id, strategy) if search.start == "data_free" else None
        if not calibrated:
            federated = FederatedSearch(grid, by_id, experiment_json, federated_settings(strategy), heads, seed)
        versions += [branch.merge_all(by_id, start, federated) for branch in branches.values()]
        profile["one_shot_search_and_merge"] = time.perf_counter() - one_shot_started
        if federated is not None:
            profile["federated_search_rounds"] = federated.seconds
            failures += federated.failures
    baselines_started = time.perf_counter()
    versions += baseline_versions(by_id, list(strategy.baselines or []), str(strategy.get("weighting", "uniform")))
    profile["baseline_merges"] = time.perf_counter() - baselines_started
    if any(c["privacy_risk"] for c in calibration.values()):
        log(
            WARNING,
            "Calibration sets were initialised from REAL images (strategy.calibration.init=real): they may contain recognisable patient images.",
        )
    details = {
        "rounds": 1,
        "order": [h.hospital_id for h in delivered],
        "order_mode": str(strategy.order),
        "search_source": search.source,
        "calibration": calibration,
        "federated_search": None if federated is None else federated.record(),
        "screening": screening,
        "profile": profile,
    }
    return StrategyOutcome(versions=versions, details=details)


def baseline_versions(
    hospitals: Sequence[HospitalReply], methods: Sequence[str], weighting: str = "uniform"
) -> list[ModelVersion]:
    """Data-free merges of the same adapters (`strategy.weighting`), for comparison in the same run."""
    ids = [h.hospital_id for h in hospitals]
    weights = hospital_weights(ids, [h.n_train for h in hospitals], weighting)
    return [
        merged_version(
            method,
            merge_adapters(
                [h.state for h in hospitals],
                [h.lora_scale for h in hospitals],
                weights,
                [h.task for h in hospitals],
                method=method,
            ),
            ids,
            weights,
            label=method,
        )
        for method in methods
    ]
