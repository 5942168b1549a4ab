"""A round's hospitals: asked within a deadline, never waiting for nodes that are gone."""

from __future__ import annotations

import time

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

import strategies.replies as replies
from fl_app.config import compose_experiment
from strategies.fedavg import AdapterFedAvg
from strategies.one_shot import OneShotMerge
from strategies.replies import NotEnoughHospitals, nodes_for_round
from tests.strategies.test_one_shot import Sink


class Nodes:
    """A Grid that lists the nodes online (a SuperNode killed in round 1 is gone in round 2)."""

    def __init__(self, *node_ids: int) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


@pytest.fixture(autouse=True)
def run_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(replies, "POLL_NODES_S", 0.01)


@pytest.mark.parametrize("strategy_class", [AdapterFedAvg, OneShotMerge])
def test_a_round_asks_the_hospitals_still_online_without_waiting_for_the_dropped_one(strategy_class):
    cfg = compose_experiment(["strategy=fedavg" if strategy_class is AdapterFedAvg else "strategy=one_shot"])
    strategy = strategy_class(cfg, sink=Sink())  # 3 hospitals configured; node 3 dropped after round 1

    started = time.time()
    messages = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), Nodes(1, 2)))

    assert time.time() - started < 5  # Flower's own sampling waited for 3 nodes for ever ("Waiting for nodes")
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2]
    assert all(m.content["config"]["server-round"] == 2 for m in messages)


def test_too_few_hospitals_online_fails_the_round_at_the_deadline():
    started = time.time()

    with pytest.raises(NotEnoughHospitals, match=r"Round 2: only 1 hospital node\(s\) online after 0 s"):
        nodes_for_round(Nodes(5), minimum=2, timeout=0.2, server_round=2)

    assert time.time() - started < 5


@pytest.mark.parametrize("strategy_class", [AdapterFedAvg, OneShotMerge])
def test_flower_does_not_announce_a_skipped_evaluation_that_then_happens(strategy_class, monkeypatch):
    import flwr.serverapp.strategy.fedavg as flower_fedavg

    lines = []
    monkeypatch.setattr(flower_fedavg, "log", lambda level, fmt, *args: lines.append(fmt % args if args else fmt))

    strategy = strategy_class(compose_experiment([]), sink=Sink())

    assert not [line for line in lines if "evaluation will be skipped" in line]
    assert strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), Nodes(1, 2)) == []
