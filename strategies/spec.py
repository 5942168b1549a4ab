"""What the rest of the code needs to know about a strategy, declared once beside its runner.

Every consumer asks the spec (`strategies.strategy_spec`): experiment validation, the ServerApp's
results header, the DP budget a hospital plans for, resume, remerge of an interrupted run, the
benchmark floor and the comparison report. Nothing outside `strategies/` branches on a strategy's
name. A spec holds data and functions only; it imports nothing heavy itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def _no_merge(strategy: Mapping[str, Any]) -> str | None:
    return None


def resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """A function, or "module:attribute" imported now (keeps heavy runners out of light imports)."""
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class StrategySpec:
    """A strategy's traits. Runner and hooks are functions or "module:function" strings.

    name:            `strategy.name` in conf/strategy/<name>.yaml.
    runner:          (grid, cfg, experiment_json, sink) -> StrategyOutcome: the Flower side.
    rounds:          takes `strategy.rounds` (>= 1) and asks every hospital to train once per round;
                     otherwise each hospital trains once.
    hospitals_train: False when no hospital trains (the centralised reference): DP at the hospital
                     does not apply and no privacy release happens.
    one_round:       every adapter a hospital sends arrives in round 1, so an interrupted or failed
                     run's adapters (received/round-1/) can be re-merged.
    merge:           strategy config -> the merge that makes its result (results.json `merge`), or
                     None when no merge does (FedAvg rounds, the centralised adapter).
    validate:        cfg -> None, raising ValueError on a setting of its own (after the common checks).
    round_versions:  (cfg, server_round, hospitals) -> the versions one training round's adapters
                     make, exactly as the run makes them. With it the run can be resumed from the
                     adapters it received and the benchmark floor can run it as a plain loop;
                     None when adapters alone are not enough (calibration sets, pooled data).
    report_baselines: merged versions of any other method in its runs are data-free baselines run
                     beside it; the report labels them `<method> (<name> baseline)`.
    """

    name: str
    runner: Callable[..., Any] | str
    rounds: bool = False
    hospitals_train: bool = True
    one_round: bool = True
    merge: Callable[[Mapping[str, Any]], str | None] = _no_merge
    validate: Callable[..., None] | str | None = None
    round_versions: Callable[..., Sequence[Any]] | str | None = None
    report_baselines: bool = False

    @property
    def resumable(self) -> bool:
        """Whether `scripts/run.py +resume=<folder>` can finish an interrupted run from its adapters."""
        return self.round_versions is not None

    @property
    def has_floor(self) -> bool:
        """Whether the benchmark floor (`fl_app.bench.floor`) can run it as a plain loop."""
        return self.round_versions is not None

    def run(self, *args: Any) -> Any:
        return resolve(self.runner)(*args)

    def check(self, cfg: Any) -> None:
        """Its own settings' checks (`validate`), if it has any."""
        if self.validate is not None:
            resolve(self.validate)(cfg)

    def versions_of_round(self, cfg: Any, server_round: int, hospitals: Sequence[Any]) -> list[Any]:
        if self.round_versions is None:
            raise ValueError(f"strategy={self.name!r} cannot rebuild its versions from the hospitals' adapters alone.")
        return list(resolve(self.round_versions)(cfg, server_round, hospitals))

    def training_rounds(self, strategy: Mapping[str, Any]) -> int:
        """How many times each hospital is asked to train: its DP releases, which a target ε covers together."""
        return int(strategy["rounds"]) if self.rounds else 1
