"""Count the bytes of every record that actually crosses the wire, per hospital, round and phase."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message

from fl_app.model.adapter import record_dict_bytes
from fl_app.server.progress import replies_as_they_arrive


@dataclass
class Transfer:
    node_id: int
    phase: str  # message type: train | evaluate
    round: int
    down: int = 0
    up: int = 0


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


class CountingGrid:
    """A Grid proxy that logs the bytes of each message it sends and each reply it receives."""

    def __init__(self, grid: Any, log: TrafficLog | None = None) -> None:
        self._grid = grid
        self.traffic = log or TrafficLog()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

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
            transfer = Transfer(message.metadata.dst_node_id, message.metadata.message_type, server_round)
            transfer.down = record_dict_bytes(message.content)
            by_node[transfer.node_id] = transfer
            self.traffic.transfers.append(transfer)
        what = f"{transfer.phase} round {transfer.round}" if transfer.round else transfer.phase
        for reply in replies_as_they_arrive(self._grid, messages, timeout=timeout, what=what):
            transfer = by_node.get(reply.metadata.src_node_id)
            if transfer is not None and reply.has_content():
                transfer.up = record_dict_bytes(reply.content)
            yield reply
