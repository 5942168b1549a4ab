"""What a hospital does with a message: load its data, train its adapter, evaluate model versions.

No Flower here beyond the record types, so these steps run in tests without a simulation.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fl_app.data import HospitalData, experiment_tasks, load_hospital, load_site, site_config
from fl_app.model.adapter import arrayrecord_to_state, state_to_arrayrecord
from fl_app.model.backbone import backbone_image_size
from fl_app.model.lora import HospitalModel, hospital_model
from fl_app.pooled_auc import score_histograms
from fl_app.protocol import ARRAYS, CONFIG, HOSPITAL, METRICS, VERSION_PREFIX, hospital_record, read_experiment
from fl_app.training import TrainSettings, medmnist_metrics, pick_device, predict_scores, train_adapter


def task_outputs(experiment: Mapping[str, Any]) -> dict[str, int]:
    """Every task of the experiment and its number of outputs: the heads every process builds."""
    return {name: task.n_outputs for name, task in experiment_tasks(experiment["data"]).items()}


def hospital_seed(seed: int, hospital_id: int, server_round: int) -> int:
    """A distinct, reproducible seed per (experiment seed, hospital, round)."""
    return zlib.crc32(f"{seed}/{hospital_id}/{server_round}".encode()) & 0x7FFFFFFF


class Hospital:
    """One hospital's data and the process-wide model it trains on."""

    def __init__(self, experiment: Mapping[str, Any], data: HospitalData) -> None:
        self.experiment = experiment
        self.id = data.hospital_id
        self.data = data
        self.model: HospitalModel = hospital_model(experiment["model"], task_outputs(experiment))
        self.device = pick_device()
        self.model.backbone.to(self.device)
        self.image_size = backbone_image_size(self.model.backbone)

    @property
    def task(self) -> str:
        return self.data.task.name

    def record(self) -> ConfigRecord:
        lora = self.experiment["lora"]
        return hospital_record(
            self.id, self.task, len(self.data.train), len(self.data.val), len(self.data.test),
            self.data.data_source, int(lora["r"]), float(lora["alpha"]),
        )

    def train(self, start: ArrayRecord | None, server_round: int) -> RecordDict:
        """Fine-tune from `start` (or a fresh adapter seeded by the experiment seed); reply content."""
        lora, train = self.experiment["lora"], self.experiment["train"]
        name = self.model.use_adapter(lora)
        self.model.reset_adapter(name, seed=int(self.experiment["seed"]))
        if start is not None and len(start) > 0:
            self.model.load_adapter_state(name, arrayrecord_to_state(start), self.task)
        self.model.peft.to(self.device)
        settings = TrainSettings(
            epochs=int(train["local_epochs"]), lr=float(train["lr"]), batch_size=int(train["batch_size"]),
            optimizer=str(train["optimizer"]), weight_decay=float(train.get("weight_decay", 0.0)),
        )
        seed = hospital_seed(int(self.experiment["seed"]), self.id, server_round)
        loss = train_adapter(self.model.peft, self.data.task, self.data.train, settings, self.image_size, seed, self.device)
        val = self._metrics(self.data.val)
        # Same keys from every hospital (Flower's FedAvg requires it): NaN when AUC is undefined.
        metrics = {"num-examples": len(self.data.train), "train-loss": loss, "val-acc": val["acc"], "val-auc": val["auc"]}
        state = self.model.adapter_state(name, [self.task])
        return RecordDict({ARRAYS: state_to_arrayrecord(state), METRICS: MetricRecord(metrics), HOSPITAL: self.record()})

    def evaluate(self, content: RecordDict) -> RecordDict:
        """Test ACC/AUC of every version in the message on this hospital's test split."""
        versions = json.loads(str(content[CONFIG]["versions"]))
        metrics: dict[str, float] = {"num-examples": len(self.data.test)}
        for version, meta in versions.items():
            name = self.model.use_adapter(self.experiment["lora"], rank=int(meta["r"]), alpha=float(meta["alpha"]))
            self.model.load_adapter_state(name, arrayrecord_to_state(content[VERSION_PREFIX + version]), self.task)
            self.model.peft.to(self.device)
            scores = self._scores(self.data.test)
            for metric, value in medmnist_metrics(self.data.task, self.data.test.labels, scores).items():
                if not math.isnan(value):
                    metrics[f"{version}/{metric}"] = value
            # Lets the server compute the AUC of all hospitals' test splits together.
            metrics[f"{version}/auc-hist"] = score_histograms(self.data.task, self.data.test.labels, scores).ravel().tolist()
        return RecordDict({METRICS: MetricRecord(metrics), HOSPITAL: self.record()})

    def _scores(self, split) -> np.ndarray:
        batch = int(self.experiment["eval"]["batch_size"])
        return predict_scores(self.model.peft, self.data.task, split, self.image_size, batch, self.device)

    def _metrics(self, split) -> dict[str, float]:
        return medmnist_metrics(self.data.task, split.labels, self._scores(split))


def simulated_hospital(experiment: Mapping[str, Any], hospital_id: int, num_hospitals: int) -> Hospital:
    """Hospital `hospital_id` of a simulation: its share of its task (fl_app.data.load_hospital)."""
    return Hospital(experiment, load_hospital(experiment["data"], hospital_id, num_hospitals, int(experiment["seed"])))


def hospital_for(experiment: Mapping[str, Any], node_config: Mapping[str, Any]) -> Hospital:
    """The hospital this node plays: a site's own data (`data-path`), or a simulated `partition-id`."""
    site = site_config(node_config)
    if site is None:
        return simulated_hospital(experiment, int(node_config["partition-id"]), int(node_config["num-partitions"]))
    image_size = backbone_image_size(hospital_model(experiment["model"], task_outputs(experiment)).backbone)
    return Hospital(experiment, load_site(experiment["data"], site, image_size, int(experiment["seed"])))


def hospital_id_of(node_config: Mapping[str, Any]) -> Any:
    """The hospital id a node config names (`hospital-id` at a site, `partition-id` in simulation), or "?"."""
    return node_config.get("hospital-id", node_config.get("partition-id", "?"))


def experiment_of(content: RecordDict) -> dict[str, Any]:
    return read_experiment(content[CONFIG])
