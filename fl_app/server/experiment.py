"""One experiment on a Flower Grid: train (strategy), evaluate every version, write results."""

from __future__ import annotations

import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.common import log
from omegaconf import DictConfig, OmegaConf

from fl_app.candidate_scoring import MESSAGE_TYPE as SEARCH_MESSAGE_TYPE
from fl_app.config import hospital_payload, save_experiment
from fl_app.data import experiment_tasks, synthetic_stand_ins
from fl_app.failures import REJECTED, Failure
from fl_app.protocol import HospitalReply, decode_train_reply
from fl_app.server.evaluation import decode_scores, evaluation_fields, evaluation_messages, planned_scores
from fl_app.server.evaluation_plan import cross_evaluation
from fl_app.server.identities import IdentityRecord, describe
from fl_app.server.results import RunResults, version_entry
from fl_app.server.status import COMPLETED, FAILED, INTERRUPTED
from fl_app.server.stop_reason import PARENT_GRACE_S, SuperLinkWatch
from fl_app.server.traffic import CountingGrid
from fl_app.server.versions import save_mixture, save_version, version_provenance
from strategies import strategy_spec
from strategies.outcome import ModelVersion
from strategies.replies import evaluate_timeout

STOPPED_BY_USER = "Stopped by user"  # Flower's reason when `flwr stop` ended the run
RECEIVED = "received"  # received/round-<k>/hospital-<id>/: every adapter as it arrived (PEFT format)


def wait_for_nodes(grid: Any, minimum: int, timeout: float = 120.0) -> list[int]:
    """The connected nodes, once at least `minimum` are there."""
    deadline = time.time() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum or time.time() > deadline:
            break
        time.sleep(1.0)
    if len(nodes) < minimum:
        raise RuntimeError(
            f"Only {len(nodes)} hospital node(s) connected after {timeout:.0f} s; strategy.min_hospitals={minimum}."
        )
    return nodes


def bound_nodes(cfg: DictConfig) -> dict[int, int]:
    """The coordinator's binding of registered node ids to hospital ids (`hospital_nodes`), if any."""
    return {int(node): int(hospital) for node, hospital in (cfg.get("hospital_nodes") or {}).items()}


class RunRecorder:
    """The `RoundSink` strategies report to: results.json, each adapter on disk as it arrives, and
    refused nodes taken off the Grid for every later phase."""

    def __init__(self, results: RunResults, cfg: DictConfig, grid: CountingGrid) -> None:
        self.results, self.cfg, self.grid = results, cfg, grid
        self.identities = IdentityRecord(results.folder)

    def __getattr__(self, name: str) -> Any:  # everything else (the centralised reference) goes to the results
        return getattr(self.results, name)

    def bound_nodes(self) -> dict[int, int]:
        return dict(self.results.hospital_of_node)

    def save_arrival(self, reply: Any, server_round: int) -> None:
        """A train reply just arrived: its adapter goes to received/round-<k>/hospital-<id>/ at once,
        so an interrupted run keeps it (`scripts/run.py +resume`, `scripts/remerge.py`)."""
        try:
            hospital = decode_train_reply(reply)
        except (KeyError, ValueError):
            return  # recorded as a failure by the strategy
        folder = (
            Path(RECEIVED) / f"round-{server_round or 1}" / f"hospital-{hospital.hospital_id}-node-{hospital.node_id}"
        )
        version = ModelVersion(
            f"hospital-{hospital.hospital_id}",
            "hospital",
            hospital.state,
            hospital.lora_r,
            hospital.lora_alpha,
            {"hospital": hospital.hospital_id, "task": hospital.task, "round": server_round or 1},
            stats=hospital.stats,
        )
        save_version(self.results.folder / folder, self.cfg, version, version_provenance(version))
        self.results.data.setdefault("received", []).append(
            {
                "round": server_round or 1,
                "hospital": hospital.hospital_id,
                **hospital.summary(),
                "r": hospital.lora_r,
                "lora_alpha": hospital.lora_alpha,
                "adapter": str(folder),
            }
        )
        self.results.write()

    def record_round(self, server_round: int, hospitals: list[HospitalReply], failures: list[Failure]) -> None:
        refused = {f.node_id for f in failures if f.reason == REJECTED and f.node_id is not None}
        if refused:
            self.grid.exclude(refused)
            log(WARNING, "Node(s) %s refused: left out of every later phase", sorted(refused))
        for failure in failures:
            named = failure.named(self.results.hospital_of_node)
            log(WARNING, "train round %d: %s left out (%s)", server_round, named.describe(), failure.reason)
        self.results.record_round(server_round, hospitals, failures)
        if changes := self.identities.check(self.results.data["hospitals"]):
            for change in changes:
                log(WARNING, "Identity: %s", describe(change))
            self.results.set(identity_changes=[*self.results.data.get("identity_changes", []), *changes])


def run_experiment_on_grid(grid: Any, cfg: DictConfig, results_dir: Path, job: str = "") -> RunResults:
    """Run the configured strategy, evaluate the versions (`evaluation_plan`: O(N) by default), write results.

    job: the sweep job's name when this experiment shares the Flower run with others (`fl_app.sweep`)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    spec = strategy_spec(cfg.strategy)
    if not (results_dir / "config.yaml").exists():
        save_experiment(cfg, results_dir / "config.yaml")
    results = RunResults(
        results_dir,
        {
            "strategy": str(cfg.strategy.name),
            "merge": spec.merge(cfg.strategy),
            "seed": int(cfg.seed),
            "scenario": str(cfg.data.scenario),
            "data_source": None,
            "tasks": list(experiment_tasks(cfg.data)),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "stage": "waiting for hospitals",
        },
        hospital_of_node=bound_nodes(cfg),
    )
    superlink = SuperLinkWatch()
    try:
        counting = CountingGrid(grid)
        nodes = wait_for_nodes(counting, int(cfg.strategy.min_hospitals))
        if len(nodes) != int(cfg.simulation.num_hospitals):
            log(
                WARNING,
                "%d hospital nodes connected; the config says simulation.num_hospitals=%d.",
                len(nodes),
                cfg.simulation.num_hospitals,
            )
        experiment_json = hospital_payload(cfg, job)
        if stand_ins := synthetic_stand_ins(cfg.data):
            log(
                WARNING,
                "Data: no MedMNIST file for %s under %s: hospitals use SYNTHETIC MedMNIST-format data (data_source in results.json).",
                ", ".join(stand_ins),
                cfg.data.root,
            )
        log(
            INFO,
            "MedForge: strategy=%s, %d hospitals, tasks %s",
            cfg.strategy.name,
            len(nodes),
            list(experiment_tasks(cfg.data)),
        )
        results.set(stage="train")
        recorder = RunRecorder(results, cfg, counting)
        counting.on_train_reply = recorder.save_arrival
        strategy_started = time.perf_counter()
        outcome = spec.run(counting, cfg, experiment_json, recorder)
        profile = {"strategy": time.perf_counter() - strategy_started, **outcome.details.get("profile", {})}
        results.set(communication=counting.traffic.summary(hospitals_by_node(results), "train"))
        _save_versions(results, cfg, outcome.versions)
        nodes = counting.get_node_ids()  # who is online now, refused nodes left out
        results.set(stage="evaluate")
        cross = cross_evaluation(cfg.strategy)
        log(
            INFO,
            "Evaluating %d model versions at %d hospitals (one message each; %s)",
            len(outcome.versions),
            len(nodes),
            "every version everywhere" if cross else "each hospital's own adapter at that hospital only",
        )
        messages = evaluation_messages(
            outcome.versions, experiment_json, nodes, hospital_of_node=results.hospital_of_node, cross=cross
        )
        evaluation_started = time.perf_counter()
        replies = counting.send_and_receive(messages, timeout=evaluate_timeout(cfg.strategy))
        profile["evaluation"] = time.perf_counter() - evaluation_started
        scores, failures, answered = decode_scores(replies, results.hospital_of_node)
        scores = planned_scores(scores, outcome.versions, cross)
        results.learn_nodes(answered)
        results.record_failures(failures)
        for failure in failures:
            log(
                WARNING,
                "evaluation: %s left out (%s)",
                failure.named(results.hospital_of_node).describe(),
                failure.reason,
            )
        _record_metrics(results, scores)
        hospital_of_node = hospitals_by_node(results)
        search_traffic = counting.traffic.summary(hospital_of_node, SEARCH_MESSAGE_TYPE)
        results.set(
            communication=counting.traffic.summary(hospital_of_node, "train"),
            evaluation_traffic=counting.traffic.summary(hospital_of_node, "evaluate"),
            search_traffic=search_traffic if search_traffic["rounds"] else None,
            profile=profile,
            strategy_details=outcome.details,
            timeline={"serverapp_started_at": results.started, **counting.traffic.timeline(hospital_of_node)},
            stage="done",
        )
        results.finish(COMPLETED)
        log(INFO, "MedForge results: %s", results.path)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, `flwr stop`, or the SuperLink stopping (a restart)
        stage = results.data.get("stage")
        results.finish(INTERRUPTED, error=superlink.interrupted(stage))  # at once: Flower force-exits in 5 s
        if not superlink.gone() and superlink.gone(PARENT_GRACE_S):  # the SuperLink stopping with it: say so
            results.finish(INTERRUPTED, error=superlink.interrupted(stage))
        raise
    except Exception as error:
        # `flwr stop`: the SuperLink refuses the ServerApp's next call with "... Stopped by user."
        stopped = STOPPED_BY_USER in str(error) or superlink.gone()
        results.finish(INTERRUPTED if stopped else FAILED, error=superlink.failed(error, results.data.get("stage")))
        raise
    return results


def hospitals_by_node(results: RunResults) -> dict[int, int]:
    """Node id -> hospital id, for the traffic figures: what the server knows (binding, replies),
    then nodes that named themselves failing."""
    failed = {
        f["node_id"]: f["hospital_id"]
        for f in results.data["failures"]
        if f.get("hospital_id") is not None and f.get("reason") != REJECTED  # an impostor is not its claimed hospital
    }
    return {**failed, **results.hospital_of_node}


def _save_versions(results: RunResults, cfg: DictConfig, versions: list[ModelVersion]) -> None:
    """Every version as a PEFT adapter folder, and its entry in results.json."""
    by_name = {version.name: version for version in versions}
    results.data["versions"] = [v for v in results.data["versions"] if v["name"] not in by_name]
    for version in versions:
        entry = version_entry(version)
        if version.mixture is not None:
            save_mixture(results.folder / entry["adapter"], cfg, version, by_name, version_provenance(version))
        else:
            save_version(results.folder / entry["adapter"], cfg, version, version_provenance(version))
        results.data["versions"].append(entry)
    results.write()


def _record_metrics(results: RunResults, scores) -> None:
    for entry in results.data["versions"]:
        entry.update(evaluation_fields(scores, entry["name"]))
    results.write()
