"""A strategy declares its traits once (strategies/spec.py), and every consumer asks it.

The proof: `TOY`, a strategy defined in this file alone (nothing in `strategies/`, `conf/` or
`fl_app/` names it), given to a run by `strategy.spec`, goes through validation, a real Flower
simulation, the comparison report and remerge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from omegaconf import DictConfig, OmegaConf

from fl_app.adapter_keys import non_lora_state
from fl_app.config import compose_experiment, hospital_payload
from fl_app.model.adapter import state_to_arrayrecord
from fl_app.protocol import HospitalReply, instructions
from fl_app.report.table import entries_of_run
from fl_app.validation import validate_experiment
from strategies import STRATEGIES, StrategySpec, spec_of_results, strategy_spec
from strategies.merging import merge_hospital_adapters
from strategies.outcome import ModelVersion, StrategyOutcome, merged_version
from strategies.replies import EvaluateAfterTraining, RoundSink, collect_replies, train_timeout
from tests.conftest import REPO, TINY
from tests.e2e.conftest import no_leftover_processes  # noqa: F401  (a fixture of the slow test)

MODULE = "tests.strategies.test_strategy_spec"


# -- the toy strategy: every hospital trains once, the server averages the adapters uniformly ----


def toy_versions(cfg: DictConfig, server_round: int, hospitals: Sequence[HospitalReply]) -> list[ModelVersion]:
    """Each hospital's own adapter and their uniform task-arithmetic average, `toy`."""
    weights = [float(cfg.strategy.toy_scale) / len(hospitals)] * len(hospitals)
    result = merge_hospital_adapters(hospitals, weights, method="task_arithmetic")
    heads = non_lora_state(result.state)
    own = [
        ModelVersion(
            f"hospital-{h.hospital_id}",
            "hospital",
            {**heads, **h.state},
            h.lora_r,
            h.lora_alpha,
            {"hospital": h.hospital_id, "task": h.task},
        )
        for h in hospitals
    ]
    ids = [h.hospital_id for h in hospitals]
    return [*own, merged_version("toy", result, ids, weights, label="toy uniform average")]


class ToyAverage(EvaluateAfterTraining, FedAvg):
    def __init__(self, cfg: DictConfig, sink: RoundSink) -> None:
        minimum = int(cfg.strategy.min_hospitals)
        super().__init__(
            fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=minimum, min_available_nodes=minimum
        )
        self.cfg, self.sink, self.versions = cfg, sink, []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        hospitals, failures = collect_replies(replies, server_round, self.sink.bound_nodes())
        self.sink.record_round(server_round, hospitals, failures)
        self.versions = toy_versions(self.cfg, server_round, hospitals)
        return state_to_arrayrecord(self.versions[-1].state), MetricRecord({"hospitals": len(hospitals)})


def run_toy(grid: Any, cfg: DictConfig, experiment_json: str, sink: RoundSink) -> StrategyOutcome:
    strategy = ToyAverage(cfg, sink)
    strategy.start(
        grid,
        ArrayRecord(),
        num_rounds=1,
        timeout=train_timeout(cfg.strategy),
        train_config=instructions(experiment_json),
    )
    return StrategyOutcome(strategy.versions, {"rounds": 1})


def validate_toy(cfg: DictConfig) -> None:
    if not float(cfg.strategy.toy_scale) > 0:
        raise ValueError(f"strategy.toy_scale={cfg.strategy.toy_scale} must be > 0.")


TOY = StrategySpec(
    name="toy",
    runner=run_toy,
    merge=lambda strategy: "toy",
    validate=validate_toy,
    round_versions=toy_versions,
    report_baselines=True,
)


def toy_experiment(tmp: Path, *overrides: str, **strategy: Any) -> DictConfig:
    """The tiny experiment (synthetic data) with the toy strategy as its whole `strategy` group."""
    cfg = compose_experiment(
        [*TINY, "train.local_epochs=1", f"data.root={tmp / 'no-medmnist'}", "simulation.num_hospitals=3", *overrides]
    )
    group = {
        "name": "toy",
        "spec": f"{MODULE}:TOY",
        "min_hospitals": 2,
        "train_timeout_s": 600,
        "evaluate_timeout_s": 600,
        "cross_evaluation": False,
        "toy_scale": 1.0,
        **strategy,
    }
    OmegaConf.update(cfg, "strategy", group, merge=False)
    return cfg


# -- fast: the spec and its consumers ------------------------------------------------------------


def test_every_registered_strategy_declares_its_traits_under_its_own_name():
    specs = {name: strategy_spec(name) for name in STRATEGIES}

    assert all(spec.name == name for name, spec in specs.items())
    assert [n for n, s in specs.items() if s.rounds] == ["fedavg"]
    assert sorted(n for n, s in specs.items() if s.resumable) == ["fedavg", "one_shot"]
    assert sorted(n for n, s in specs.items() if s.one_round) == ["medforge", "one_shot"]
    assert [n for n, s in specs.items() if not s.hospitals_train] == ["centralised"]


def test_an_unknown_strategy_fails_listing_the_choices():
    with pytest.raises(ValueError, match=r"strategy='nope' is not valid; choose one of \['centralised', 'fedavg'"):
        strategy_spec("nope")


def test_a_spec_must_declare_the_name_the_config_gives():
    with pytest.raises(ValueError, match="declares strategy 'toy', but strategy.name='other'"):
        strategy_spec({"name": "other", "spec": f"{MODULE}:TOY"})


def test_the_toy_strategy_passes_validation_and_its_own_check_runs(tmp_path):
    validate_experiment(toy_experiment(tmp_path))

    with pytest.raises(ValueError, match="strategy.toy_scale=-1.0 must be > 0"):
        validate_experiment(toy_experiment(tmp_path, toy_scale=-1.0))


def test_hospitals_plan_their_dp_budget_for_the_rounds_the_spec_declares(tmp_path):
    fedavg = compose_experiment([*TINY, "strategy=fedavg", "strategy.rounds=4"])
    one_shot_with_rounds = compose_experiment([*TINY, "strategy=one_shot", "++strategy.rounds=4"])  # a sweep's `++`

    assert json.loads(hospital_payload(fedavg))["privacy_rounds"] == 4
    assert json.loads(hospital_payload(one_shot_with_rounds))["privacy_rounds"] == 1
    assert json.loads(hospital_payload(toy_experiment(tmp_path)))["privacy_rounds"] == 1


def test_the_report_labels_data_free_merges_beside_a_strategy_that_declares_baselines():
    results = {
        "strategy": "toy",
        "merge": "toy",
        "config": {"strategy": {"name": "toy", "spec": f"{MODULE}:TOY"}},
        "versions": [
            {"name": "toy", "kind": "merged", "label": "toy uniform average"},
            {"name": "ties", "kind": "merged", "label": "ties"},
        ],
    }

    labels = [e.label for e in entries_of_run(results, "run")]

    assert spec_of_results(results) is not None and spec_of_results(results).name == "toy"
    assert labels == ["toy uniform average", "ties (toy baseline)"]


def test_a_run_of_a_strategy_this_code_does_not_know_still_reports():
    results = {"strategy": "gone", "merge": None, "versions": [{"name": "m", "kind": "merged", "label": "m"}]}

    assert spec_of_results(results) is None
    assert [e.label for e in entries_of_run(results, "run")] == ["m"]


# -- slow: a real Flower simulation of the toy strategy, then the report and remerge --------------


@pytest.mark.slow
@pytest.mark.usefixtures("no_leftover_processes")
def test_a_strategy_defined_in_a_test_file_runs_reports_and_remerges(tmp_path, monkeypatch):
    from fl_app.remerge.plan import plan_requests
    from fl_app.remerge.run import remerge
    from fl_app.remerge.stored import load_stored_run
    from fl_app.report import load_runs, write_report
    from fl_app.server.results import read_results
    from fl_app.simulation import run_simulation

    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the ServerApp imports this file's TOY
    run_dir = tmp_path / "run"

    run_simulation(toy_experiment(tmp_path, "quiet=true"), run_dir, quiet=True)
    results = read_results(run_dir)
    report = write_report(load_runs([run_dir]), tmp_path / "report")["md"].read_text()
    run = load_stored_run(run_dir)
    added = remerge(run, plan_requests(["ties"], [], run.experiment.strategy))

    assert results["status"] == "completed" and results["strategy"] == "toy" and results["merge"] == "toy"
    assert [v["name"] for v in results["versions"]] == ["hospital-0", "hospital-1", "hospital-2", "toy"]
    assert results["versions"][-1]["weights"] == {
        "0": pytest.approx(1 / 3),
        "1": pytest.approx(1 / 3),
        "2": pytest.approx(1 / 3),
    }
    assert results["versions"][-1]["mean_acc"] is not None
    assert "toy uniform average" in report
    assert [e["name"] for e in added] == ["remerge-ties"] and added[0]["mean_auc"] is not None
    assert "remerge-ties" in [v["name"] for v in read_results(run_dir)["versions"]]
