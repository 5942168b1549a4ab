"""A failure record: which hospital failed, in which phase, and why (results.json `failures`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Failure:
    """One hospital left out of a step. `hospital_id` is None when the node never named its hospital."""

    hospital_id: int | None
    phase: str  # train | screen | evaluate
    reason: str
    node_id: int | None = None
    round: int | None = None  # the server round (0 for the evaluation)
    tensor: str | None = None  # screen: the offending tensor's key
    problem: str | None = None  # screen: what is wrong with it

    def as_dict(self) -> dict[str, Any]:
        """As results.json records it (the reason under `error`; screen details only when set)."""
        record = {
            "node_id": self.node_id,
            "hospital_id": self.hospital_id,
            "round": self.round,
            "phase": self.phase,
            "error": self.reason,
        }
        if self.tensor is not None or self.problem is not None:
            record |= {"tensor": self.tensor, "problem": self.problem}
        return record

    def describe(self) -> str:
        return f"hospital {self.hospital_id} (node {self.node_id}): {self.reason}"
