"""Progress while hospitals work: replies counted as they arrive, throttled, one line when all are in."""

from __future__ import annotations

from types import SimpleNamespace

import fl_app.server.progress as progress


class TrickleGrid:
    """Answers one pushed message per pull, the way slow hospitals reply one after another."""

    def push_messages(self, messages):
        self.pending = [str(i) for i, _ in enumerate(messages)]
        return list(self.pending)

    def pull_messages(self, message_ids):
        if not self.pending:
            return []
        reply_to = self.pending.pop(0)
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=reply_to), has_error=lambda: reply_to == "1")
        ]


def test_replies_are_reported_throttled_and_once_complete(monkeypatch):
    lines = []
    monkeypatch.setattr(progress, "log", lambda level, fmt, *args: lines.append(fmt % args))
    monkeypatch.setattr(progress, "POLL_S", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)

    replies = list(progress.replies_as_they_arrive(TrickleGrid(), ["m0", "m1", "m2"], what="train round 1"))

    assert len(replies) == 3
    assert len(lines) == 1 and lines[0].startswith("train round 1: 3/3 hospitals replied, 1 with an error (")


def test_every_arrival_is_reported_when_the_interval_allows(monkeypatch):
    lines = []
    monkeypatch.setattr(progress, "log", lambda level, fmt, *args: lines.append(fmt % args))
    monkeypatch.setattr(progress, "POLL_S", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)

    list(progress.replies_as_they_arrive(TrickleGrid(), ["m0", "m1"], what="evaluate"))

    assert [line.split(" (")[0] for line in lines] == [
        "evaluate: 1/2 hospitals replied",
        "evaluate: 2/2 hospitals replied, 1 with an error",
    ]


class SilentAfterFirst:
    """Answers the first pushed message only: the second hospital never replies."""

    def push_messages(self, messages):
        for i, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{i}"
        self.answered = False
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        if self.answered:
            return []
        self.answered = True
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id="m0"), has_error=lambda: False)]


def test_a_hospital_silent_past_the_timeout_gets_a_timeout_error_reply(monkeypatch):
    from flwr.app import Message, Metadata, RecordDict

    from fl_app.failures import ERROR_CODE_TIMEOUT, TIMEOUT, failure_cause

    monkeypatch.setattr(progress, "POLL_S", 0.01)
    messages = [
        Message(
            content=RecordDict(),
            metadata=Metadata(
                run_id=1,
                message_id="",
                src_node_id=0,
                dst_node_id=node,
                reply_to_message_id="",
                group_id="",
                created_at=0.0,
                ttl=3600.0,
                message_type="train",
            ),
        )
        for node in (11, 12)
    ]

    replies = list(progress.replies_as_they_arrive(SilentAfterFirst(), messages, timeout=0.3, what="train round 1"))

    assert len(replies) == 2
    late = replies[1]
    assert late.has_error() and late.error.code == ERROR_CODE_TIMEOUT
    assert late.metadata.src_node_id == 12 and late.metadata.reply_to_message_id == "m1"
    assert failure_cause(late.error.code, late.error.reason) == TIMEOUT
