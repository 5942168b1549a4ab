"""Sorting a round's replies into hospitals that delivered and hospitals that failed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from flwr.app import Message

from fl_app.failures import Failure
from fl_app.protocol import HospitalReply, claimed_hospital_id, decode_train_reply, reply_failure


class NotEnoughHospitals(RuntimeError):
    """Fewer hospitals delivered an adapter than `strategy.min_hospitals` requires."""


class RoundSink(Protocol):
    """Where a strategy reports each round as soon as it has it (results are written at once)."""

    def record_round(self, server_round: int, hospitals: list[HospitalReply], failures: list[Failure]) -> None: ...


def collect_replies(replies: Iterable[Message], server_round: int) -> tuple[list[HospitalReply], list[Failure]]:
    """Decode good replies; turn errors and undecodable replies into failure records."""
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
    return _first_of_each_hospital(hospitals, failures, server_round)


def _first_of_each_hospital(
    hospitals: list[HospitalReply], failures: list[Failure], server_round: int
) -> tuple[list[HospitalReply], list[Failure]]:
    """Two nodes claiming one hospital id (a site's node config copied) would overwrite each other: keep one, report the other."""
    kept: dict[int, HospitalReply] = {}
    for hospital in hospitals:
        first = kept.setdefault(hospital.hospital_id, hospital)
        if first is not hospital:
            error = (
                f"hospital-id={hospital.hospital_id} is claimed by nodes {first.node_id} and {hospital.node_id}; "
                "give each SuperNode its own hospital-id in --node-config"
            )
            failures.append(Failure(hospital.hospital_id, "train", error, node_id=hospital.node_id, round=server_round))
    return list(kept.values()), failures


def require_enough(hospitals: list[HospitalReply], failures: list[Failure], minimum: int, server_round: int) -> None:
    """Stop the run with a clear error when too few hospitals delivered."""
    if len(hospitals) < minimum:
        failed = ", ".join(f.describe() for f in failures) or "none"
        raise NotEnoughHospitals(
            f"Round {server_round}: only {len(hospitals)} hospital(s) delivered an adapter, "
            f"strategy.min_hospitals={minimum}. Failures: {failed}. "
            "Fix the failing hospitals or lower strategy.min_hospitals."
        )
