"""Server-side pure pieces: per-task pooling, keywise FedAvg, byte counting, atomic results."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from flwr.supercore.task_identity import TaskIdentity

from fl_app.model.adapter import record_dict_bytes, state_to_arrayrecord
from fl_app.pooled_auc import AUC_BINS
from fl_app.server.evaluation import HospitalScores, mean_over_tasks, per_task_metrics
from fl_app.server.results import RunResults, read_results
from fl_app.server.traffic import CountingGrid
from strategies.fedavg import keywise_average


def _histogram(positives: list[int], negatives: list[int]) -> np.ndarray:
    """A one-column histogram with scores at the given bins."""
    hist = np.zeros((1, 2, AUC_BINS), dtype=np.int64)
    np.add.at(hist[0, 0], positives, 1)
    np.add.at(hist[0, 1], negatives, 1)
    return hist.ravel()


def test_accuracy_pools_by_test_size_and_auc_pools_the_histograms():
    scores = [
        # hospital 0 ranks its own cases perfectly, but its positives score below hospital 1's negatives
        HospitalScores(0, "breastmnist", 100, {"merged/acc": 0.9, "merged/auc-hist": _histogram([300], [100])}),
        HospitalScores(1, "breastmnist", 300, {"merged/acc": 0.5, "merged/auc-hist": _histogram([900], [500])}),
        HospitalScores(2, "bloodmnist", 50, {"merged/acc": 0.4, "merged/auc-hist": _histogram([], [10])}),  # undefined
    ]

    per_task = per_task_metrics(scores, "merged")

    assert per_task["breastmnist"]["acc"] == pytest.approx((0.9 * 100 + 0.5 * 300) / 400)
    assert per_task["breastmnist"]["auc"] == pytest.approx(3 / 4)  # pairs: (300>100) (300<500) (900>100) (900>500)
    assert per_task["bloodmnist"]["auc"] is None
    assert mean_over_tasks(per_task, "acc") == pytest.approx((0.6 + 0.4) / 2)


def test_keywise_average_equals_flower_fedavg_when_keys_agree():
    states = [{"a": torch.randn(3, 2), "b": torch.randn(4)} for _ in range(3)]
    examples = [10, 30, 60]
    contents = [RecordDict({"arrays": state_to_arrayrecord(s), "metrics": MetricRecord({"num-examples": n})}) for s, n in zip(states, examples)]

    ours = keywise_average(states, examples)
    flowers = aggregate_arrayrecords(contents, "num-examples").to_torch_state_dict()

    assert all(torch.allclose(ours[k], flowers[k], atol=1e-6) for k in ours)


def test_keywise_average_averages_each_task_head_over_its_own_hospitals():
    states = [{"lora": torch.ones(2), "heads.a.w": torch.ones(2)}, {"lora": 3 * torch.ones(2), "heads.b.w": 5 * torch.ones(2)}]

    averaged = keywise_average(states, [1, 1])

    assert torch.equal(averaged["lora"], 2 * torch.ones(2))
    assert torch.equal(averaged["heads.a.w"], torch.ones(2)) and torch.equal(averaged["heads.b.w"], 5 * torch.ones(2))


class EchoGrid:
    """A stand-in Grid that answers each message with a fixed reply content."""

    def __init__(self, reply: RecordDict) -> None:
        self.reply = reply

    def get_node_ids(self):
        return [1, 2]

    def push_messages(self, messages):
        self.pushed = {str(i): m for i, m in enumerate(messages)}
        return list(self.pushed)

    def pull_messages(self, message_ids):
        return [
            SimpleNamespace(
                metadata=SimpleNamespace(src_node_id=self.pushed[i].metadata.dst_node_id, reply_to_message_id=i),
                content=self.reply,
                has_content=lambda: True,
                has_error=lambda: False,
            )
            for i in message_ids
        ]


def test_counting_grid_counts_the_records_actually_sent_and_received(monkeypatch):
    for field in ("_run_id", "_node_id", "_task_id"):  # Flower messages outside a run need an identity
        monkeypatch.setattr(TaskIdentity, field, 1)
    arrays = state_to_arrayrecord({"w": torch.zeros(10)})
    reply = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 5})})
    grid = CountingGrid(EchoGrid(reply))
    content = RecordDict({"config": ConfigRecord({"server-round": 2, "experiment": "{}"})})

    grid.send_and_receive([Message(content, dst_node_id=n, message_type="train") for n in (1, 2)])

    summary = grid.traffic.summary({1: 0, 2: 1}, "train")
    assert summary["download_bytes"] == 2 * record_dict_bytes(content)
    assert summary["upload_bytes"] == 2 * record_dict_bytes(reply)
    assert summary["per_hospital"]["0"]["per_round"]["2"]["upload_bytes"] == record_dict_bytes(reply)
    assert grid.get_node_ids() == [1, 2]


def test_results_are_strict_json_and_survive_a_failure(tmp_path):
    results = RunResults(tmp_path, {"strategy": "one_shot"})
    results.set(versions=[{"name": "merged", "mean_auc": math.nan}])

    results.finish("failed", error="boom")

    data = read_results(tmp_path)
    assert data["status"] == "failed" and data["error"] == "boom"
    assert data["versions"][0]["mean_auc"] is None
    assert not list(tmp_path.glob(".results.json.*"))  # no temp files left behind
    json.loads((tmp_path / "results.json").read_text())
