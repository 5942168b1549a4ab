"""A training round's hospitals: who is asked (within a deadline), who delivered, who failed and why."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import INFO
from typing import Any, Protocol

from flwr.app import Message, MessageType, RecordDict
from flwr.common import log

from fl_app.failures import REJECTED, Failure
from fl_app.protocol import HospitalReply, claimed_hospital_id, decode_train_reply, reply_failure

DEFAULT_TRAIN_TIMEOUT_S = 1800.0
DEFAULT_EVALUATE_TIMEOUT_S = 1800.0
POLL_NODES_S = 1.0


class NotEnoughHospitals(RuntimeError):
    """Fewer hospitals delivered an adapter (or were online) than `strategy.min_hospitals` requires."""


class RoundSink(Protocol):
    """Where a strategy reports each round as soon as it has it (results are written at once)."""

    def record_round(self, server_round: int, hospitals: list[HospitalReply], failures: list[Failure]) -> None: ...

    def bound_nodes(self) -> Mapping[int, int]:
        """Node id -> hospital id the server trusts so far (configured binding, hospitals accepted)."""
        ...


class EvaluateAfterTraining:
    """Mixed into a Flower FedAvg (with `self.cfg`, the experiment): each round trains at every hospital
    online once `min_hospitals` are, within the deadline (Flower's own sampling would wait for ever for
    a dropped node); no per-round evaluation by Flower (which, with fraction_evaluate=0, would announce
    "Federated evaluation will be skipped"): every version is evaluated once, at every hospital, after
    training (fl_app/server/evaluation.py)."""

    cfg: Any
    arrayrecord_key: str
    configrecord_key: str

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> list[Message]:
        config["server-round"] = server_round
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return train_messages(grid, self.cfg.strategy, server_round, content)

    def configure_evaluate(self, server_round: int, arrays: Any, config: Any, grid: Any) -> list[Message]:
        return []


def train_messages(grid: Any, strategy: Any, server_round: int, content: RecordDict) -> list[Message]:
    """One train message with `content` to every node online (at least `strategy.min_hospitals`, within the deadline)."""
    nodes = nodes_for_round(grid, int(strategy.min_hospitals), train_timeout(strategy), server_round)
    return [Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN) for node in nodes]


def train_timeout(strategy: Any) -> float:
    """Seconds a training round waits for hospitals (`strategy.train_timeout_s`)."""
    return float(strategy.get("train_timeout_s") or DEFAULT_TRAIN_TIMEOUT_S)


def evaluate_timeout(strategy: Any) -> float:
    """Seconds the evaluation waits for hospitals (`strategy.evaluate_timeout_s`)."""
    return float(strategy.get("evaluate_timeout_s") or DEFAULT_EVALUATE_TIMEOUT_S)


def nodes_for_round(grid: Any, minimum: int, timeout: float, server_round: int) -> list[int]:
    """Every connected node once at least `minimum` are (never waits past `timeout`: a dropped
    hospital must not hang the next round, as Flower's own `sample_nodes` would)."""
    deadline = time.time() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < minimum:
        if time.time() >= deadline:
            raise NotEnoughHospitals(
                f"Round {server_round}: only {len(nodes)} hospital node(s) online after {timeout:.0f} s, "
                f"strategy.min_hospitals={minimum}. Start the missing SuperNodes, raise strategy.train_timeout_s "
                "or lower strategy.min_hospitals."
            )
        time.sleep(POLL_NODES_S)
    log(INFO, "train round %d: asking %d hospital node(s)", server_round, len(nodes))
    return nodes


def collect_replies(
    replies: Iterable[Message], server_round: int, bound: Mapping[int, int] | None = None
) -> tuple[list[HospitalReply], list[Failure]]:
    """Decode good replies; turn errors, undecodable replies and refused hospital ids into failure records.

    `bound`: node id -> hospital id the server already trusts (the coordinator's `hospital_nodes`,
    hospitals accepted in earlier rounds); a reply claiming another node's hospital is refused.
    """
    hospitals, failures = [], []
    for message in replies:
        if message.has_error():
            failures.append(reply_failure(message, server_round, "train"))
            continue
        try:
            hospitals.append(decode_train_reply(message))
        except (KeyError, ValueError) as error:
            failures.append(
                Failure(
                    claimed_hospital_id(message.content),
                    "train",
                    str(error),
                    node_id=message.metadata.src_node_id,
                    round=server_round,
                )
            )
    hospitals.sort(key=lambda h: (h.hospital_id, h.node_id))
    return _bound_hospitals(hospitals, failures, server_round, dict(bound or {}))


def _bound_hospitals(
    hospitals: list[HospitalReply], failures: list[Failure], server_round: int, bound: dict[int, int]
) -> tuple[list[HospitalReply], list[Failure]]:
    """Each hospital id from one node only: the node it is bound to; with no binding, a hospital id
    claimed by two nodes in one round is refused for both (the server cannot tell the genuine one)."""
    owner = {hospital: node for node, hospital in bound.items()}
    claims: dict[int, list[HospitalReply]] = {}
    for hospital in hospitals:
        claims.setdefault(hospital.hospital_id, []).append(hospital)
    kept = []
    for hospital_id, claimants in claims.items():
        for hospital in claimants:
            error = _refusal(hospital, claimants, bound, owner)
            if error is None:
                kept.append(hospital)
            else:
                failures.append(
                    Failure(hospital_id, "train", error, node_id=hospital.node_id, round=server_round, reason=REJECTED)
                )
    return kept, failures


def _refusal(
    hospital: HospitalReply, claimants: list[HospitalReply], bound: dict[int, int], owner: dict[int, int]
) -> str | None:
    node, hospital_id = hospital.node_id, hospital.hospital_id
    if node in bound and bound[node] != hospital_id:
        return f"node {node} is hospital {bound[node]}, not hospital-id={hospital_id}; its reply is refused"
    if hospital_id in owner and owner[hospital_id] != node:
        return (
            f"hospital-id={hospital_id} belongs to node {owner[hospital_id]}; node {node} claiming it is refused "
            "and left out of every later phase"
        )
    if hospital_id not in owner and len(claimants) > 1:
        nodes = ", ".join(str(h.node_id) for h in claimants)
        return (
            f"hospital-id={hospital_id} is claimed by nodes {nodes}; give each SuperNode its own hospital-id in "
            "--node-config, and bind node ids to hospitals with hospital_nodes={node-id: hospital-id} so an "
            "impostor cannot displace a site"
        )
    return None


def require_enough(hospitals: list[HospitalReply], failures: list[Failure], minimum: int, server_round: int) -> None:
    """Stop the run with a clear error when too few hospitals delivered."""
    if len(hospitals) < minimum:
        failed = ", ".join(f.describe() for f in failures) or "none"
        raise NotEnoughHospitals(
            f"Round {server_round}: only {len(hospitals)} hospital(s) delivered an adapter, "
            f"strategy.min_hospitals={minimum}. Failures: {failed}. "
            "Fix the failing hospitals or lower strategy.min_hospitals."
        )
