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
