"""Count the bytes of every record that actually crosses the wire, per hospital, round and phase."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message

from fl_app.failures import ERROR_CODE_TIMEOUT
from fl_app.model.adapter import record_dict_bytes
from fl_app.server.progress import replies_as_they_arrive


@dataclass
class Transfer:
    node_id: int
    phase: str  # message type: train | evaluate
    round: int
    down: int = 0
    up: int = 0
    sent_at: float = 0.0  # epoch seconds
    replied_at: float | None = None
    step_seconds: float | None = None  # the hospital's own time on it, as it reported


@dataclass
class TrafficLog:
    """Every message's bytes, down (server -> hospital) and up (hospital -> server)."""

    transfers: list[Transfer] = field(default_factory=list)

    def summary(self, hospital_of_node: dict[int, int], phase: str = "train") -> dict[str, Any]:
        """Totals and per-hospital figures for one phase, as results.json stores them."""
        selected = [t for t in self.transfers if t.phase == phase]
        per_hospital: dict[str, dict[str, Any]] = {}
        for t in selected:
            key = str(hospital_of_node.get(t.node_id, f"node-{t.node_id}"))
            entry = per_hospital.setdefault(key, {"upload_bytes": 0, "download_bytes": 0, "per_round": {}})
            entry["upload_bytes"] += t.up
            entry["download_bytes"] += t.down
            round_entry = entry["per_round"].setdefault(str(t.round), {"upload_bytes": 0, "download_bytes": 0})
            round_entry["upload_bytes"] += t.up
            round_entry["download_bytes"] += t.down
        return {
            "upload_bytes": sum(t.up for t in selected),
            "download_bytes": sum(t.down for t in selected),
            "rounds": len({t.round for t in selected}),
            "per_hospital": per_hospital,
        }

    def timeline(self, hospital_of_node: dict[int, int]) -> dict[str, Any]:
        """When messages left and replies came back (epoch s), and the hospitals' own seconds per phase
        and per message: what splits a run into start-up, hospital work and per-message overhead."""
        replied = [t for t in self.transfers if t.replied_at is not None]
        first = min(replied, key=lambda t: t.replied_at, default=None)
        phases: dict[str, dict[str, float]] = {}
        for t in self.transfers:
            entry = phases.setdefault(
                t.phase, {"first_sent_at": t.sent_at, "last_reply_at": 0.0, "messages": 0, "step_seconds": 0.0}
            )
            entry["first_sent_at"] = min(entry["first_sent_at"], t.sent_at)
            entry["last_reply_at"] = max(entry["last_reply_at"], t.replied_at or 0.0)
            entry["messages"] += 1
            entry["step_seconds"] += t.step_seconds or 0.0
        return {
            "first_sent_at": min((t.sent_at for t in self.transfers), default=None),
            "first_reply_at": first.replied_at if first else None,
            "first_reply_phase": first.phase if first else None,
            "first_reply_hospital": hospital_of_node.get(first.node_id) if first else None,
            "first_reply_step_seconds": first.step_seconds if first else None,
            "last_reply_at": max((t.replied_at for t in replied), default=None),
            "phases": phases,
            "messages": [
                {
                    "hospital": hospital_of_node.get(t.node_id),
                    "node_id": t.node_id,
                    "phase": t.phase,
                    "round": t.round,
                    "sent_at": t.sent_at,
                    "replied_at": t.replied_at,
                    "step_seconds": t.step_seconds,
                }
                for t in self.transfers
            ],
        }


class CountingGrid:
    """A Grid proxy that logs the bytes of each message it sends and each reply it receives.

    Nodes the server refused (`exclude`) are no longer listed by `get_node_ids`, so no later
    phase (a FedAvg round, the evaluation) sends them anything.
    """

    def __init__(self, grid: Any, log: TrafficLog | None = None) -> None:
        self._grid = grid
        self.traffic = log or TrafficLog()
        self.excluded: set[int] = set()
        # Called with (reply, round) for every train reply as it arrives (the results folder saves its adapter).
        self.on_train_reply: Callable[[Message, int], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        return [node for node in self._grid.get_node_ids() if node not in self.excluded]

    def exclude(self, node_ids: Iterable[int]) -> None:
        self.excluded.update(node_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return list(self.replies_as_they_arrive(messages, timeout=timeout))

    def replies_as_they_arrive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterator[Message]:
        """Send `messages`; yield each reply as it arrives, its bytes counted."""
        messages = list(messages)
        if not messages:
            return
        by_node: dict[int, Transfer] = {}
        for message in messages:
            config = message.content.config_records.get("config")
            server_round = int(config.get("server-round", 0)) if config is not None else 0
            transfer = Transfer(
                message.metadata.dst_node_id, message.metadata.message_type, server_round, sent_at=time.time()
            )
            transfer.down = record_dict_bytes(message.content)
            by_node[transfer.node_id] = transfer
            self.traffic.transfers.append(transfer)
        what = f"{transfer.phase} round {transfer.round}" if transfer.round else transfer.phase
        for reply in replies_as_they_arrive(self._grid, messages, timeout=timeout, what=what):
            transfer = by_node.get(reply.metadata.src_node_id)
            timed_out = reply.has_error() and reply.error.code == ERROR_CODE_TIMEOUT
            if transfer is not None and not timed_out:
                transfer.replied_at = time.time()
                if reply.has_content():
                    transfer.up = record_dict_bytes(reply.content)
                    metrics = reply.content.metric_records.get("metrics")
                    if metrics is not None and "step-seconds" in metrics:
                        transfer.step_seconds = float(metrics["step-seconds"])
                    if self.on_train_reply is not None and transfer.phase == "train":
                        self.on_train_reply(reply, transfer.round)
            yield reply
