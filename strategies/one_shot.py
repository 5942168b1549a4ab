"""One-shot merging: one round, every hospital trains once, the server merges the adapters once.

A Flower FedAvg whose `aggregate_train` merges with a named method from `strategies.merging`
instead of averaging; nodes, sampling and the round loop are Flower's.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp.strategy import FedAvg
from omegaconf import DictConfig

from fl_app.adapter_keys import non_lora_state
from fl_app.model.adapter import state_to_arrayrecord
from fl_app.protocol import HospitalReply, instructions
from strategies.merging import ScreenAction
from strategies.outcome import ModelVersion, StrategyOutcome, merged_version
from strategies.replies import (
    EvaluateAfterTraining,
    RoundSink,
    collect_replies,
    require_enough,
    train_timeout,
)
from strategies.screening import expected_layout, merge_hospitals, screen, weigh


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
        self.merge_result = None
        self.weights: list[float] = []
        self.screen_actions: list[ScreenAction] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        strategy = self.cfg.strategy
        delivered, failures = collect_replies(replies, server_round, self.sink.bound_nodes())
        hospitals, rejections, self.screen_actions = screen(
            delivered, expected_layout(self.cfg), strategy, server_round
        )
        failures += rejections
        self.hospitals = hospitals
        self.sink.record_round(server_round, delivered, failures)
        require_enough(hospitals, failures, int(strategy.min_hospitals), server_round)
        self.weights = weigh(hospitals, strategy)
        log(
            INFO,
            "Merging %d adapters with %s (weights %s)",
            len(hospitals),
            strategy.merge,
            [round(w, 3) for w in self.weights],
        )
        self.merge_result = merge_hospitals(hospitals, self.weights, strategy)
        metrics = MetricRecord({"hospitals": len(hospitals), "merged-rank": self.merge_result.rank})
        return state_to_arrayrecord(self.merge_result.state), metrics


def run_one_shot(grid: Any, cfg: DictConfig, experiment_json: str, sink: RoundSink) -> StrategyOutcome:
    """Train once at every hospital, merge once; versions: each hospital's adapter and the merge."""
    strategy = OneShotMerge(cfg, sink=sink)
    # Empty initial arrays: every hospital builds the same seeded initial adapter itself.
    strategy.start(
        grid,
        ArrayRecord(),
        num_rounds=1,
        timeout=train_timeout(cfg.strategy),
        train_config=instructions(experiment_json),
    )
    versions = one_shot_versions(strategy.hospitals, strategy.weights, strategy.merge_result, cfg)
    screening = [action.as_dict() for action in strategy.screen_actions]
    return StrategyOutcome(
        versions=versions, merge=str(cfg.strategy.merge), details={"rounds": 1, "screening": screening}
    )


def one_shot_versions(
    hospitals: list[HospitalReply], weights: list[float], merged, cfg: DictConfig
) -> list[ModelVersion]:
    """Each hospital's own adapter (heads of other tasks from the merge) and the merged adapter."""
    merged_heads = non_lora_state(merged.state)
    versions = [
        ModelVersion(
            name=f"hospital-{h.hospital_id}",
            kind="hospital",
            # Its own LoRA and head; other tasks keep their (merged) heads so every task can be scored.
            state={**merged_heads, **h.state},
            r=h.lora_r,
            alpha=h.lora_alpha,
            details={"hospital": h.hospital_id, "task": h.task},
        )
        for h in hospitals
    ]
    versions.append(merged_version("merged", merged, [h.hospital_id for h in hospitals], weights))
    return versions
