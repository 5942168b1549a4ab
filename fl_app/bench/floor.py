"""The physical floor of an experiment: the same hospital steps, merge and evaluation, one plain loop.

No Flower, no Ray, no messages crossing processes: hospitals train one after another in this
process through `Hospital` (the code a ClientApp runs), the server-side pieces run on the replies
as `run_experiment_on_grid` would (screen, weights, merge or FedAvg average, save every version),
and every hospital evaluates the versions the run would send it (`evaluation_plan`). What a Flower run spends beyond
this is framework overhead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from fl_app.config import hospital_payload
from fl_app.hospital_steps import simulated_hospital
from fl_app.model.adapter import state_to_arrayrecord
from fl_app.protocol import HospitalReply, decode_train_content
from fl_app.server.evaluation import versions_content
from fl_app.server.evaluation_plan import cross_evaluation, versions_for_hospital
from fl_app.server.versions import save_version
from strategies import strategy_spec
from strategies.outcome import ModelVersion


@dataclass(frozen=True)
class FloorRun:
    """Seconds of the plain loop, split into its phases, and how many images it pushed through."""

    seconds: float
    train_seconds: float
    evaluate_seconds: float
    versions: int
    images_trained: int
    images_evaluated: int


def train_all(experiment: dict, num_hospitals: int, server_round: int, start=None) -> list[HospitalReply]:
    """Every hospital trains once, in turn (node id = hospital id)."""
    return [
        decode_train_content(simulated_hospital(experiment, i, num_hospitals).train(start, server_round), node_id=i)
        for i in range(num_hospitals)
    ]


def strategy_loop(cfg: DictConfig, experiment: dict) -> tuple[list[ModelVersion], int]:
    """Versions and the training examples seen: every round, every hospital trains in turn and the
    strategy makes that round's versions (`StrategySpec.round_versions`, as the run does); the next
    round starts from the last of them (FedAvg's global adapter)."""
    spec = strategy_spec(cfg.strategy)
    if not spec.has_floor:
        raise ValueError(f"strategy={spec.name!r} has no benchmark floor: its versions need more than the adapters.")
    rounds, n = spec.training_rounds(cfg.strategy), int(cfg.simulation.num_hospitals)
    versions, start, seen = [], None, 0
    for server_round in range(1, rounds + 1):
        replies = train_all(experiment, n, server_round, start)
        seen += sum(h.n_train for h in replies)
        made = spec.versions_of_round(cfg, server_round, replies)
        versions += made
        start = state_to_arrayrecord(made[-1].state)
    return versions, seen


def run_floor(cfg: DictConfig, out_dir: Path) -> FloorRun:
    """Run the experiment `cfg` as one plain loop; versions are saved under `out_dir`."""
    experiment_json = hospital_payload(cfg)
    experiment = json.loads(experiment_json)
    n = int(cfg.simulation.num_hospitals)
    started = time.perf_counter()
    versions, examples = strategy_loop(cfg, experiment)
    for version in versions:
        save_version(out_dir / "adapters" / version.name, cfg, version, {"version": version.name})
    trained = time.perf_counter()
    cross = cross_evaluation(cfg.strategy)
    images = 0
    for i in range(n):
        planned = versions_for_hospital(versions, i, cross)  # what the run sends hospital i
        hospital = simulated_hospital(experiment, i, n)
        hospital.evaluate(versions_content(planned, experiment_json))
        images += len(hospital.data.test) * len(planned)
    done = time.perf_counter()
    trained_images = examples * int(cfg.train.local_epochs)
    return FloorRun(done - started, trained - started, done - trained, len(versions), trained_images, images)


def main(argv: list[str] | None = None) -> int:
    """`python -m fl_app.bench.floor CONFIG OUT [REPEATS]`: warm up, run the floor, print its runs as JSON.

    Run as its own process (in its own session, as the SuperLink of a Flower run is), so that the
    loop and the simulation meet the same scheduler and their memory is measured alike.
    """
    import sys
    from dataclasses import asdict

    import torch
    from omegaconf import OmegaConf

    from fl_app.data.worker_cache import clear_hospital_cache
    from fl_app.model.lora import _cached_hospital_model

    config, out, *rest = argv if argv is not None else sys.argv[1:]
    repeats = int(rest[0]) if rest else 1
    cfg = OmegaConf.load(config)
    torch.set_num_threads(int(cfg.simulation.client_cpus))
    warm_up = OmegaConf.merge(cfg, {"simulation": {"num_hospitals": 2}})
    run_floor(warm_up, Path(out) / "warm-up")  # first calls of torch/PEFT in this process: not the floor's cost
    runs = []
    for repeat in range(repeats):
        clear_hospital_cache()  # cold, as a fresh Ray worker
        _cached_hospital_model.cache_clear()
        runs.append(asdict(run_floor(cfg, Path(out) / f"run-{repeat}")))
    print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
