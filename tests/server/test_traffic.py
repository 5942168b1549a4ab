"""Byte counting on the Grid (fl_app/server/traffic.py)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_app.model.adapter import record_dict_bytes, state_to_arrayrecord
from fl_app.server.traffic import CountingGrid


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


def test_timeline_lists_every_message_with_the_hospitals_own_seconds(monkeypatch):
    for field in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, field, 1)
    reply = RecordDict({"metrics": MetricRecord({"num-examples": 5, "step-seconds": 1.5})})
    grid = CountingGrid(EchoGrid(reply))
    content = RecordDict({"config": ConfigRecord({"server-round": 3})})

    grid.send_and_receive([Message(content, dst_node_id=n, message_type="train") for n in (1, 2)])

    messages = grid.traffic.timeline({1: 0, 2: 1})["messages"]
    assert [(m["hospital"], m["node_id"], m["phase"], m["round"], m["step_seconds"]) for m in messages] == [
        (0, 1, "train", 3, 1.5),
        (1, 2, "train", 3, 1.5),
    ]
    assert all(m["replied_at"] >= m["sent_at"] > 0 for m in messages)
