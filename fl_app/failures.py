"""A failure record: which hospital failed, in which phase, and why (results.json `failures`).

Its fields are named as results.json names them (`reason`: the kind of failure, `error`: the text),
so a record reads back from disk with `Failure.from_record` unchanged."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from fl_app.app_pins import APP_NOT_PINNED

# Why a hospital was left out (results.json `reason`), from the error its reply carries.
TIMEOUT = "timeout"  # no reply before the phase's deadline (strategy.train_timeout_s / evaluate_timeout_s)
UNAVAILABLE = "unavailable"  # the SuperLink lost the node (no heartbeat): a SuperNode that stopped or lost its network
CRASHED = "crashed"  # the hospital's process died (simulation: its Ray worker; deployment: the ClientApp process)
REJECTED = "rejected"  # the server refused the node (a hospital id it may not claim, or claimed twice)
ERROR = "error"  # the hospital reported an error (its data, its training) or sent a reply that does not decode
APP_REFUSED = "app-refused"  # the site refused the run's app bundle: its hash is not pinned there (fl_app.app_pins)

# Error codes of replies the server makes up itself (Flower's own codes are 0-8).
ERROR_CODE_TIMEOUT = 1002
# Flower's ErrorCode values (flwr.common.constant.ErrorCode), read without importing Flower here.
_FLOWER_NODE_UNAVAILABLE, _FLOWER_CLIENT_APP_CRASHED = 5, 8
_CRASH_MARKERS = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError")


def failure_cause(code: int, reason: str) -> str:
    """The `reason` of a failed reply from its error code (and, for Ray's crashes, its text)."""
    if code == ERROR_CODE_TIMEOUT:
        return TIMEOUT
    if code == _FLOWER_NODE_UNAVAILABLE:
        return UNAVAILABLE
    if code == _FLOWER_CLIENT_APP_CRASHED or any(marker in reason for marker in _CRASH_MARKERS):
        return CRASHED
    if APP_NOT_PINNED in reason:
        return APP_REFUSED
    return ERROR


@dataclass(frozen=True)
class Failure:
    """One hospital left out of a step. `hospital_id` is None when the server cannot tell which hospital a node is."""

    hospital_id: int | None
    phase: str  # train | screen | evaluate
    error: str  # what happened, in words
    node_id: int | None = None
    round: int | None = None  # the server round (0 for the evaluation)
    tensor: str | None = None  # screen: the offending tensor's key
    problem: str | None = None  # screen: what is wrong with it
    reason: str = ERROR  # timeout | unavailable | crashed | rejected | app-refused | error

    def as_dict(self) -> dict[str, Any]:
        """As results.json records it (screen details only when set)."""
        record = {
            "node_id": self.node_id,
            "hospital_id": self.hospital_id,
            "round": self.round,
            "phase": self.phase,
            "reason": self.reason,
            "error": self.error,
        }
        if self.tensor is not None or self.problem is not None:
            record |= {"tensor": self.tensor, "problem": self.problem}
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Failure:
        """A failure as results.json lists it (any results.json this project wrote)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})

    def named(self, hospital_of_node: dict[int, int]) -> Failure:
        """This failure with its hospital filled in from what the server knows of its node."""
        if self.hospital_id is not None or self.node_id not in hospital_of_node:
            return self
        return replace(self, hospital_id=hospital_of_node[self.node_id])

    def describe(self) -> str:
        """For a log line: the hospital and its node, or the node alone while its hospital is unknown."""
        who = (
            f"node {self.node_id}" if self.hospital_id is None else f"hospital {self.hospital_id} (node {self.node_id})"
        )
        return f"{who}: {self.error}"
