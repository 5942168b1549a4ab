"""The `centralised` reference: one adapter trained on the pooled data of every simulated hospital.

The upper bound every federated-learning paper reports next to `local` (each hospital's own
adapter): what the same recipe reaches if the data could be pooled. It breaks the premise on
purpose, so it exists only in simulation, where the server can rebuild each hospital's share of
the data (the same partition, caps and seed the hospitals use). One adapter, one head per task,
trained on the batches of all tasks shuffled together with the experiment's `train` recipe and
early-stopped on the pooled validation splits; then evaluated at every hospital like any version.
No hospital sends anything for training, so its training traffic is zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.common import log
from omegaconf import DictConfig, OmegaConf

from fl_app.data import HospitalData, experiment_tasks, load_hospital
from fl_app.data.arrays import SplitArrays
from fl_app.model.backbone import backbone_image_size
from fl_app.model.lora import hospital_model
from fl_app.protocol import hospital_summary
from fl_app.training import (
    medmnist_metrics,
    pick_device,
    predict_scores,
    train_adapter_on_tasks,
    train_settings,
    validation_score,
)
from strategies.outcome import ModelVersion, StrategyOutcome
from strategies.spec import StrategySpec

VERSION_NAME = "centralised"


def pooled_splits(hospitals: Sequence[HospitalData], split: str) -> dict[str, SplitArrays]:
    """Each task's `split` over every hospital that holds it, concatenated in hospital order."""
    pooled: dict[str, SplitArrays] = {}
    for task in dict.fromkeys(h.task.name for h in hospitals):
        parts = [getattr(h, split) for h in hospitals if h.task.name == task]
        pooled[task] = SplitArrays(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    return pooled


def train_centralised(experiment: dict[str, Any], hospitals: Sequence[HospitalData]) -> tuple[dict, dict[str, Any]]:
    """The pooled adapter's state (LoRA + every task's head) and what the training did."""
    tasks = {h.task.name: h.task for h in hospitals}
    model = hospital_model(
        experiment["model"], {name: task.n_outputs for name, task in experiment_tasks(experiment["data"]).items()}
    )
    name = model.use_adapter(experiment["lora"])
    model.reset_adapter(name, seed=int(experiment["seed"]))
    device = pick_device()
    model.peft.to(device)
    image_size = backbone_image_size(model.backbone)
    train, val = pooled_splits(hospitals, "train"), pooled_splits(hospitals, "val")
    batch = int(experiment["eval"]["batch_size"])

    def validate() -> float:
        scores = []
        for task, split in val.items():
            metrics = medmnist_metrics(
                tasks[task], split.labels, predict_scores(model.peft, tasks[task], split, image_size, batch, device)
            )
            scores.append(validation_score(metrics))
        return float(np.mean([s for s in scores if not math.isnan(s)] or [math.nan]))

    started = time.perf_counter()
    result = train_adapter_on_tasks(
        model.peft,
        [(tasks[t], split) for t, split in train.items()],
        train_settings(experiment["train"]),
        image_size,
        int(experiment["seed"]),
        device,
        validate,
    )
    details = {
        "method": VERSION_NAME,
        "label": "centralised (pooled data)",
        "hospitals": [h.hospital_id for h in hospitals],
        "n_train": {t: len(s) for t, s in train.items()},
        "best_epoch": result.best_epoch,
        "train_seconds": round(time.perf_counter() - started, 3),
    }
    return model.adapter_state(name, list(train)), details


def run_centralised(grid: Any, cfg: DictConfig, experiment_json: str, results: Any) -> StrategyOutcome:
    """Train the pooled adapter in the server process; the run then evaluates it at every hospital."""
    if cfg.data.scenario == "site":
        raise ValueError(
            "strategy=centralised pools the simulated hospitals' data in one process; a deployment's "
            "sites never share data, so it is a simulation reference only (data=multi_task or multi_center)."
        )
    experiment = OmegaConf.to_container(cfg, resolve=True)
    n = int(cfg.simulation.num_hospitals)
    hospitals = [load_hospital(experiment["data"], i, n, int(cfg.seed)) for i in range(n)]
    results.set_hospitals(
        [
            hospital_summary(h.hospital_id, None, h.task.name, len(h.train), len(h.val), len(h.test), h.data_source)
            for h in hospitals
        ]
    )
    log(INFO, "Centralised reference: one adapter on the pooled training data of %d hospitals", n)
    state, details = train_centralised(experiment, hospitals)
    results.write()
    version = ModelVersion(VERSION_NAME, "reference", state, int(cfg.lora.r), float(cfg.lora.alpha), details)
    return StrategyOutcome(versions=[version], details={"best_epoch": details["best_epoch"]})


# No hospital trains (no privacy release); its adapter cannot be rebuilt from hospital adapters.
SPEC = StrategySpec(name=VERSION_NAME, runner=run_centralised, hospitals_train=False, one_round=False)
