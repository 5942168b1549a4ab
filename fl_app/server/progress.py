"""Progress a person can follow while hospitals work: replies counted as they arrive, throttled.

Flower's `Grid.send_and_receive` is silent until every reply is in; a training round at real
hospitals can take many minutes. This does the same push-then-pull, and logs how many hospitals
have replied at most once every `LOG_EVERY_S` seconds, plus once when all are in.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from logging import INFO
from typing import Any

from flwr.app import Message
from flwr.common import log

POLL_S = 0.1  # as Flower's own in-memory Grid: a coarser poll adds up to POLL_S to every round
LOG_EVERY_S = 10.0


def replies_as_they_arrive(
    grid: Any, messages: Iterable[Message], *, timeout: float | None = None, what: str = "messages"
) -> Iterator[Message]:
    """Push `messages`, then yield each reply as soon as it is pulled (asynchronous arrival)."""
    pending = set(grid.push_messages(list(messages)))
    total, started = len(pending), time.time()
    received = failed = logged = 0
    last_log = started
    while pending and (timeout is None or time.time() - started < timeout):
        arrived = list(grid.pull_messages(pending))
        pending -= {reply.metadata.reply_to_message_id for reply in arrived}
        received += len(arrived)
        failed += sum(1 for reply in arrived if reply.has_error())
        now = time.time()
        if received > logged and (not pending or now - last_log >= LOG_EVERY_S):
            log(
                INFO,
                "%s: %d/%d hospitals replied%s (%.0f s)",
                what,
                received,
                total,
                f", {failed} with an error" if failed else "",
                now - started,
            )
            logged, last_log = received, now
        yield from arrived
        if pending:
            time.sleep(POLL_S)
