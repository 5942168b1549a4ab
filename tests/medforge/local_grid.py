"""A Grid stand-in that delivers messages to real `Hospital` steps in this process (no Flower run).

Replies come back one per pull, in a chosen order, so arrival-order logic is exercised.
"""

from __future__ import annotations

from types import SimpleNamespace

from flwr.app import RecordDict

from fl_app.candidate_scoring import MESSAGE_TYPE as SEARCH
from fl_app.hospital_steps import experiment_of, search_peers, simulated_hospital
from fl_app.privacy.ledger import Ledger
from fl_app.protocol import ARRAYS, calibration_request


class LocalGrid:
    def __init__(self, num_hospitals: int, reply_order: list[int] | None = None, failing: tuple[int, ...] = ()) -> None:
        self.num_hospitals = num_hospitals
        self.reply_order = reply_order or list(range(num_hospitals))
        self.failing = set(failing)
        self._queued: dict[str, object] = {}
        self.state = {i: RecordDict() for i in range(num_hospitals)}  # each node's Context.state
        self.ledgers = {i: Ledger() for i in range(num_hospitals)}
        self.received: list[tuple[int, object]] = []  # (hospital id, message) of every message delivered
        self.replied: list[tuple[int, object]] = []  # (hospital id, reply content) of every reply

    def get_node_ids(self) -> list[int]:
        return [100 + i for i in range(self.num_hospitals)]

    def push_messages(self, messages) -> list[str]:
        ids = []
        for i, message in enumerate(messages):
            mid = f"m{len(self._queued)}-{i}"
            self._queued[mid] = message
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        """One reply per pull, the hospital first in `reply_order` among those pending."""
        pending = {self._queued[i].metadata.dst_node_id - 100: i for i in ids}
        hospital_id = next(h for h in self.reply_order if h in pending)
        mid = pending[hospital_id]
        return [self._reply(mid, self._queued.pop(mid), hospital_id)]

    def _reply(self, mid: str, message, hospital_id: int) -> SimpleNamespace:
        metadata = SimpleNamespace(
            src_node_id=100 + hospital_id, reply_to_message_id=mid, message_type=message.metadata.message_type
        )
        if hospital_id in self.failing:
            error = SimpleNamespace(code=1001, reason=f"hospital-id={hospital_id}: RuntimeError: disk full")
            return SimpleNamespace(error=error, metadata=metadata, has_error=lambda: True, has_content=lambda: False)
        experiment = experiment_of(message.content)
        hospital = simulated_hospital(experiment, hospital_id, self.num_hospitals)
        self.received.append((hospital_id, message))
        if message.metadata.message_type == SEARCH:
            peers = search_peers(message.content, self.state[hospital_id], "medforge-search/")
            content = hospital.search_losses(message.content, peers, self.ledgers[hospital_id])
        elif message.metadata.message_type == "train":
            start = message.content[ARRAYS] if ARRAYS in message.content else None
            content = hospital.train(start, 1, calibration_request(message.content))
        else:
            content = hospital.evaluate(message.content)
        self.replied.append((hospital_id, content))
        return SimpleNamespace(content=content, metadata=metadata, has_error=lambda: False, has_content=lambda: True)
