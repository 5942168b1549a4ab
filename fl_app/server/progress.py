"""Progress a person can follow while hospitals work: replies counted as they arrive, throttled.

Flower's `Grid.send_and_receive` is silent until every reply is in; a training round at real
hospitals can take many minutes. This does the same push-then-pull, and logs how many hospitals
have replied at most once every `LOG_EVERY_S` seconds, plus once when all are in. With a
`timeout`, the hospitals that have not replied by then get an error reply made here (code
`ERROR_CODE_TIMEOUT`), so a round never waits longer than its deadline and every missing
hospital is accounted for; their late replies are never pulled.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from logging import INFO, WARNING
from typing import Any

from flwr.app import Error, Message, Metadata
from flwr.common import log

from fl_app.failures import ERROR_CODE_TIMEOUT

POLL_S = 0.1  # as Flower's own in-memory Grid: a coarser poll adds up to POLL_S to every round
LOG_EVERY_S = 10.0


def replies_as_they_arrive(
    grid: Any, messages: Iterable[Message], *, timeout: float | None = None, what: str = "messages"
) -> Iterator[Message]:
    """Push `messages`, then yield each reply as soon as it is pulled (asynchronous arrival);
    after `timeout` seconds, a timeout error reply for each message still unanswered."""
    messages = list(messages)
    sent = {message_id: message for message_id, message in zip(grid.push_messages(messages), messages) if message_id}
    pending = set(sent)
    total, started = len(pending), time.time()
    received = failed = logged = 0
    last_log = started
    while pending and (timeout is None or time.time() - started < timeout):
        arrived = [_from_node_asked(reply, sent) for reply in grid.pull_messages(pending)]
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
    if pending:
        log(
            WARNING,
            "%s: %d/%d hospitals did not reply within %.0f s; going on without them",
            what,
            len(pending),
            total,
            timeout,
        )
    for message_id in sorted(pending):
        yield timeout_reply(sent[message_id], message_id, timeout)


def _from_node_asked(reply: Message, sent: dict[str, Message]) -> Message:
    """The reply as coming from the node that was asked. When a node stops, the SuperLink answers
    for it ("Node Unavailable") with its own id as sender; without this the lost hospital could not
    be named and its traffic would be filed under the SuperLink."""
    asked = sent.get(reply.metadata.reply_to_message_id)
    if asked is not None and reply.metadata.src_node_id != asked.metadata.dst_node_id:
        reply.metadata.__dict__["_src_node_id"] = asked.metadata.dst_node_id
    return reply


def timeout_reply(message: Message, message_id: str, timeout: float | None) -> Message:
    """The error reply standing in for a hospital that did not answer `message` (pushed as
    `message_id`) within `timeout` seconds."""
    meta = message.metadata
    reply = Metadata(
        run_id=meta.run_id,
        message_id="",
        src_node_id=meta.dst_node_id,
        dst_node_id=meta.src_node_id,
        reply_to_message_id=message_id,
        group_id=meta.group_id,
        created_at=time.time(),
        ttl=meta.ttl,
        message_type=meta.message_type,
    )
    reason = f"timeout: no reply within {timeout:.0f} s; a late reply is ignored"
    return Message(error=Error(code=ERROR_CODE_TIMEOUT, reason=reason), metadata=reply)
