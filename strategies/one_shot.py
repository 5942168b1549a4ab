"""One-shot merging: one round, every hospital trains once, the server merges the adapters once.

A Flower FedAvg whose `aggregate_train` merges with a named method from `strategies.merging`
instead of averaging; nodes, sampling and the round loop are Flower's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from omegaconf import DictConfig

from fl_app.merge_stats import REQUEST as STATS_REQUEST
from fl_app.merge_stats import StatsRequest
from fl_app.model.adapter import state_to_arrayrecord
from fl_app.privacy.settings import privacy_settings
from fl_app.protocol import HospitalReply, instructions
from strategies.merging import MERGE_METHODS, WEIGHTINGS, ScreenAction, get_merge_method
from strategies.outcome import ModelVersion, StrategyOutcome
from strategies.replies import (
    EvaluateAfterTraining,
    RoundSink,
    collect_replies,
    train_timeout,
)
from strategies.screening import (
    ScreenedMerge,
    expected_layout,
    max_share,
    requested_stats,
    screen_settings,
    screen_weigh_merge,
)
from strategies.spec import StrategySpec


class OneShotMerge(EvaluateAfterTraining, FedAvg):
    """Collect every hospital's adapter in one round and merge them in one step."""

    def __init__(self, cfg: DictConfig, sink: RoundSink) -> None:
        strategy = cfg.strategy
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,  # see EvaluateAfterTraining
            min_train_nodes=int(strategy.min_hospitals),
            min_available_nodes=int(strategy.min_hospitals),
        )
        self.cfg = cfg
        self.sink = sink
        self.hospitals: list[HospitalReply] = []  # the hospitals merged (screened)
        self.merged: ScreenedMerge | None = None
        self.screen_actions: list[ScreenAction] = []

    @property
    def weights(self) -> list[float]:
        return self.merged.weights if self.merged else []

    @property
    def merge_result(self):
        return self.merged.result if self.merged else None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        strategy = self.cfg.strategy
        delivered, failures = collect_replies(replies, server_round, self.sink.bound_nodes())

        def screened(accepted: list[HospitalReply], rejections: list, actions: list[ScreenAction]) -> None:
            self.hospitals, self.screen_actions = accepted, actions
            self.sink.record_round(server_round, delivered, failures + rejections)

        self.merged = screen_weigh_merge(
            delivered, strategy, expected_layout(self.cfg), server_round, int(strategy.min_hospitals), screened
        )
        metrics = MetricRecord({"hospitals": len(self.hospitals), "merged-rank": self.merged.result.rank})
        return state_to_arrayrecord(self.merged.result.state), metrics


def run_one_shot(grid: Any, cfg: DictConfig, experiment_json: str, sink: RoundSink) -> StrategyOutcome:
    """Train once at every hospital, merge once; versions: each hospital's adapter and the merge."""
    strategy = OneShotMerge(cfg, sink=sink)
    # Empty initial arrays: every hospital builds the same seeded initial adapter itself.
    strategy.start(
        grid,
        ArrayRecord(),
        num_rounds=1,
        timeout=train_timeout(cfg.strategy),
        train_config=instructions(experiment_json, **stats_instructions(cfg.strategy)),
    )
    screening = [action.as_dict() for action in strategy.screen_actions]
    return StrategyOutcome(versions=strategy.merged.versions(), details={"rounds": 1, "screening": screening})


def stats_instructions(strategy: DictConfig) -> dict[str, str]:
    """The train config entry asking hospitals for merge statistics, when the merge or `strategy.stats` wants any."""
    kinds = requested_stats(strategy)
    if not kinds:
        return {}
    return {STATS_REQUEST: StatsRequest(kinds, int(strategy.get("fisher_examples", 256))).to_json()}


def round_versions(cfg: DictConfig, server_round: int, hospitals: Sequence[HospitalReply]) -> list[ModelVersion]:
    """The versions the run makes of its round's adapters (resume, the benchmark floor)."""
    strategy = cfg.strategy
    merged = screen_weigh_merge(hospitals, strategy, expected_layout(cfg), server_round, int(strategy.min_hospitals))
    return merged.versions()


def validate_one_shot(cfg: DictConfig) -> None:
    """Raise ValueError on the first invalid merge setting (`strategy.merge`, weighting, weights, cap, rank, screen)."""
    strategy, num_hospitals = cfg.strategy, int(cfg.simulation.num_hospitals)
    if strategy.merge not in MERGE_METHODS:
        raise ValueError(f"strategy.merge={strategy.merge!r} is not valid; choose one of {sorted(MERGE_METHODS)}.")
    get_merge_method(str(strategy.merge)).resolve(strategy.merge_params)  # unknown parameters fail here
    if strategy.weighting not in WEIGHTINGS:
        raise ValueError(f"strategy.weighting={strategy.weighting!r} is not valid; choose one of {WEIGHTINGS}.")
    if strategy.weighting == "explicit":
        if not strategy.weights:
            raise ValueError("strategy.weighting=explicit needs strategy.weights={hospital_id: weight, ...}.")
        _validate_explicit_weights(strategy.weights, num_hospitals)
    share = max_share(strategy)
    if not (share is None or 0 < share <= 1):
        raise ValueError(f"strategy.robust.max_share={share} must be null (no cap) or in (0, 1].")
    if not (strategy.merge_rank is None or int(strategy.merge_rank) >= 1):
        raise ValueError(f"strategy.merge_rank={strategy.merge_rank} must be null (lossless) or a positive integer.")
    screen_settings(strategy)  # bad bounds fail here, naming the setting
    kinds = requested_stats(strategy)  # unknown statistics fail here, naming the choices
    if kinds and privacy_settings(cfg.get("privacy")).enabled:
        raise ValueError(
            f"strategy.merge={strategy.merge} / strategy.stats={list(strategy.get('stats') or [])} ask hospitals for "
            f"merge statistics {list(kinds)}, which have no DP release yet, under privacy.enabled=true (the hospitals "
            "would refuse). Use a data-free merge (task_arithmetic, ties, ...) with strategy.stats=[]."
        )
    if not (isinstance(strategy.get("fisher_examples", 256), int) and int(strategy.get("fisher_examples", 256)) >= 1):
        raise ValueError(f"strategy.fisher_examples={strategy.get('fisher_examples')!r} must be an integer >= 1.")
    ranks = list(cfg.simulation.get("lora_r") or [])
    if len(set(ranks)) > 1 and get_merge_method(str(strategy.merge)).same_rank:
        raise ValueError(
            f"strategy.merge={strategy.merge} averages A and B separately and needs one rank; simulation.lora_r={ranks} "
            "mixes ranks: use task_arithmetic, ties, knots, ... (exact for mixed ranks)."
        )


def _validate_explicit_weights(weights: Mapping[Any, Any], num_hospitals: int) -> None:
    """Ids are hospitals of this run, weights finite, and at least one positive (heads use only positive weights)."""
    for key, weight in weights.items():
        if not (str(key).isdigit() and int(key) < num_hospitals):
            raise ValueError(f"strategy.weights names hospital {key!r}; hospital ids are 0..{num_hospitals - 1}.")
        if not (isinstance(weight, int | float) and math.isfinite(float(weight))):
            raise ValueError(f"strategy.weights[{key}]={weight!r} must be a finite number.")
    if not any(float(w) > 0 for w in weights.values()):
        raise ValueError(
            f"strategy.weights={dict(weights)} has no positive weight: a negative weight subtracts a hospital's ΔW "
            "and heads are averaged over the positive weights only, so at least one hospital needs a weight > 0."
        )


SPEC = StrategySpec(
    name="one_shot",
    runner=run_one_shot,
    merge=lambda strategy: str(strategy["merge"]),
    validate=validate_one_shot,
    round_versions=round_versions,
)
