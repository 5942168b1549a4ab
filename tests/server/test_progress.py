"""Progress while hospitals work: replies counted as they arrive, throttled, one line when all are in;
a deadline, and replies the SuperLink makes for a lost node filed under that node."""

from __future__ import annotations

from flwr.app import Error, Message, Metadata, RecordDict

import fl_app.server.progress as progress
from fl_app.failures import ERROR_CODE_TIMEOUT, TIMEOUT, failure_cause

SUPERLINK_NODE_ID = 1  # the sender of the replies a SuperLink makes itself


def metadata(src: int, dst: int, reply_to: str = "") -> Metadata:
    return Metadata(
        run_id=1,
        message_id="",
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id=reply_to,
        group_id="",
        created_at=0.0,
        ttl=3600.0,
        message_type="train",
    )


def instruction(node: int) -> Message:
    return Message(content=RecordDict(), metadata=metadata(0, node))


class TrickleGrid:
    """Answers one pushed message per pull, the way slow hospitals reply one after another; node 11
    is lost, so the SuperLink answers for it ("Node Unavailable", sent by the SuperLink itself)."""

    def __init__(self, silent: set[int] = frozenset()) -> None:
        self.silent = silent

    def push_messages(self, messages):
        self.pending = [(f"m{i}", m.metadata.dst_node_id) for i, m in enumerate(messages)]
        self.pending = [(message_id, node) for message_id, node in self.pending if node not in self.silent] + [
            (message_id, node) for message_id, node in self.pending if node in self.silent
        ]
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        if not self.pending or self.pending[0][1] in self.silent:
            return []
        reply_to, node = self.pending.pop(0)
        if node == 11:
            return [Message(error=Error(5, "Node Unavailable"), metadata=metadata(SUPERLINK_NODE_ID, 0, reply_to))]
        return [Message(content=RecordDict(), metadata=metadata(node, 0, reply_to))]


def test_replies_are_reported_throttled_and_once_complete(monkeypatch):
    lines = []
    monkeypatch.setattr(progress, "log", lambda level, fmt, *args: lines.append(fmt % args))
    monkeypatch.setattr(progress, "POLL_S", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)

    replies = list(
        progress.replies_as_they_arrive(TrickleGrid(), [instruction(n) for n in (10, 11, 12)], what="train round 1")
    )

    assert len(replies) == 3
    assert len(lines) == 1 and lines[0].startswith("train round 1: 3/3 hospitals replied, 1 with an error (")


def test_every_arrival_is_reported_when_the_interval_allows(monkeypatch):
    lines = []
    monkeypatch.setattr(progress, "log", lambda level, fmt, *args: lines.append(fmt % args))
    monkeypatch.setattr(progress, "POLL_S", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)

    list(progress.replies_as_they_arrive(TrickleGrid(), [instruction(10), instruction(11)], what="evaluate"))

    assert [line.split(" (")[0] for line in lines] == [
        "evaluate: 1/2 hospitals replied",
        "evaluate: 2/2 hospitals replied, 1 with an error",
    ]


def test_the_superlinks_reply_for_a_lost_node_is_filed_under_that_node(monkeypatch):
    monkeypatch.setattr(progress, "POLL_S", 0.0)

    replies = list(progress.replies_as_they_arrive(TrickleGrid(), [instruction(10), instruction(11)]))

    lost = [r for r in replies if r.has_error()]
    assert [r.metadata.src_node_id for r in lost] == [11]  # was 1, the SuperLink: the site could not be named


def test_a_hospital_silent_past_the_timeout_gets_a_timeout_error_reply(monkeypatch):
    monkeypatch.setattr(progress, "POLL_S", 0.01)

    grid = TrickleGrid(silent={12})
    replies = list(progress.replies_as_they_arrive(grid, [instruction(10), instruction(12)], timeout=0.3))

    assert len(replies) == 2
    late = replies[1]
    assert late.has_error() and late.error.code == ERROR_CODE_TIMEOUT
    assert late.metadata.src_node_id == 12 and late.metadata.reply_to_message_id == "m1"
    assert failure_cause(late.error.code, late.error.reason) == TIMEOUT
