"""What travels between the server and a hospital: record keys and (de)serialisation helpers.

Shared by the ClientApp and the server so both sides agree on one vocabulary.
A train reply carries `arrays` (the adapter), `metrics` (numbers, incl. `num-examples`)
and `hospital` (who answered: id, task, split sizes, data source).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fl_app.failures import ERROR, Failure, failure_cause
from fl_app.merge_stats import REQUEST as STATS_REQUEST
from fl_app.merge_stats import STATS, StatsRequest
from fl_app.model.adapter import arrayrecord_to_state, record_dict_bytes

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
HOSPITAL = "hospital"
VERSION_PREFIX = "version:"
HOSPITAL_ERROR_TAG = re.compile(r"hospital-id=(\d+)")
DATA_FINGERPRINT = "data-fingerprint"  # optional field of the `hospital` record
DATA_FINGERPRINT_HEX = 16  # 64 bits of the data's SHA-256: enough to notice a change, no more


def instructions(experiment_json: str, **extra: Any) -> ConfigRecord:
    """The ConfigRecord a hospital needs: the experiment (JSON) plus per-round values."""
    return ConfigRecord({"experiment": experiment_json, **extra})


def calibration_request(content: RecordDict) -> dict[str, Any] | None:
    """The calibration-set settings a train message asks for (JSON under config `calibration`), if any."""
    config = content[CONFIG] if CONFIG in content else None
    if config is None or "calibration" not in config:
        return None
    return json.loads(str(config["calibration"]))


def stats_request(content: RecordDict) -> StatsRequest | None:
    """The merge statistics a train message asks for (JSON under config `merge-stats`), if any."""
    config = content[CONFIG] if CONFIG in content else None
    if config is None or STATS_REQUEST not in config:
        return None
    return StatsRequest.from_json(str(config[STATS_REQUEST]))


def read_experiment(config: ConfigRecord) -> dict[str, Any]:
    """The experiment dict sent in `instructions`."""
    return json.loads(str(config["experiment"]))


@dataclass
class HospitalReply:
    """One hospital's successful train reply, decoded."""

    node_id: int
    hospital_id: int
    task: str
    n_train: int
    n_val: int
    n_test: int
    data_source: str
    metrics: dict[str, float]
    state: dict[str, torch.Tensor] = field(repr=False)
    lora_r: int = 0
    lora_alpha: float = 0.0
    upload_bytes: int = 0
    data_fingerprint: str | None = None  # a deployed site's data, as sent (fl_app.server.identities compares runs)
    stats: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # `fl_app.merge_stats`, if asked

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_r

    def summary(self) -> dict[str, Any]:
        """The hospital as results.json lists it."""
        return hospital_summary(
            self.hospital_id,
            self.node_id,
            self.task,
            self.n_train,
            self.n_val,
            self.n_test,
            self.data_source,
            self.data_fingerprint,
        )


def hospital_summary(
    hospital_id: int,
    node_id: int | None,
    task: str,
    n_train: int,
    n_val: int,
    n_test: int,
    data_source: str,
    data_fingerprint: str | None = None,
) -> dict[str, Any]:
    """A hospital as results.json lists it (node_id None: no node trained, e.g. the centralised reference;
    data_fingerprint only from a deployed site)."""
    summary = {
        "id": hospital_id,
        "node_id": node_id,
        "task": task,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "data_source": data_source,
    }
    return summary | ({"data_fingerprint": data_fingerprint} if data_fingerprint is not None else {})


def hospital_record(
    hospital_id: int,
    task: str,
    n_train: int,
    n_val: int,
    n_test: int,
    data_source: str,
    lora_r: int,
    lora_alpha: float,
    data_fingerprint: str | None = None,
) -> ConfigRecord:
    """The `hospital` record of a reply: who answered and what its adapter is (and, from a deployed
    site, a fingerprint of its data: the coordinator notices when it changes between runs)."""
    fingerprint = {DATA_FINGERPRINT: data_fingerprint} if data_fingerprint else {}
    return ConfigRecord(
        {
            **fingerprint,
            "hospital-id": hospital_id,
            "task": task,
            "n-train": n_train,
            "n-val": n_val,
            "n-test": n_test,
            "data-source": data_source,
            "lora-r": lora_r,
            "lora-alpha": float(lora_alpha),
        }
    )


def decode_train_reply(message: Message) -> HospitalReply:
    """Decode a successful train reply (raises ValueError naming what is missing)."""
    return decode_train_content(message.content, message.metadata.src_node_id)


def decode_train_content(content: RecordDict, node_id: int) -> HospitalReply:
    """Decode the content of node `node_id`'s train reply (what `Hospital.train` returns).

    Every field is the hospital's claim: each is checked here, at the edge, and a bad one raises a
    ValueError naming the field, so the hospital is recorded as failed and the others are merged.
    """
    for key in (ARRAYS, METRICS, HOSPITAL):
        if key not in content:
            raise ValueError(f"Train reply from node {node_id} has no {key!r} record.")
    info = content[HOSPITAL]
    fields = _reported_fields(info, node_id)
    metrics = {}
    for name, value in content[METRICS].items():  # NaN is a fair report (e.g. AUC of a one-class split); lists are not
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"Train reply from node {node_id}: metric {name!r}={value!r} is not a number.")
        metrics[name] = float(value)
    fingerprint = info.get(DATA_FINGERPRINT)
    return HospitalReply(
        node_id=node_id,
        **fields,
        metrics=metrics,
        state=arrayrecord_to_state(content[ARRAYS]),
        upload_bytes=record_dict_bytes(content),
        data_fingerprint=str(fingerprint)[:64] if fingerprint else None,
        stats=arrayrecord_to_state(content[STATS]) if STATS in content else {},
    )


# field of the `hospital` record -> (HospitalReply attribute, type, what a valid value is, check)
REPORTED_FIELDS: dict[str, tuple[str, type, str, Any]] = {
    "hospital-id": ("hospital_id", int, "an integer >= 0", lambda v: v >= 0),
    "task": ("task", str, "a task name", lambda v: bool(v.strip())),
    "n-train": ("n_train", int, "an integer >= 1", lambda v: v >= 1),
    "n-val": ("n_val", int, "an integer >= 0", lambda v: v >= 0),
    "n-test": ("n_test", int, "an integer >= 0", lambda v: v >= 0),
    "data-source": ("data_source", str, "a data source name", lambda v: True),
    "lora-r": ("lora_r", int, "an integer >= 1", lambda v: v >= 1),
    "lora-alpha": ("lora_alpha", float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0),
}


def _reported_fields(info: ConfigRecord, node_id: int) -> dict[str, Any]:
    """The `hospital` record's fields as HospitalReply attributes, each checked (ValueError naming the field)."""
    fields = {}
    for key, (attribute, kind, valid, check) in REPORTED_FIELDS.items():
        if key not in info:
            raise ValueError(f"Train reply from node {node_id}: the hospital record has no {key!r}.")
        value = info[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) or not check(value):
            raise ValueError(
                f"Train reply from node {node_id}: {key}={value!r} is not {valid}; "
                "the hospital's client sends a malformed record (check its MedForge version and node config)."
            )
        fields[attribute] = value
    return fields


def claimed_hospital_id(content: RecordDict) -> int | None:
    """The hospital id a reply claims, when it carries a readable one (to name a hospital whose reply is rejected)."""
    try:
        value = content[HOSPITAL]["hospital-id"]
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def reply_failure(message: Message, server_round: int, phase: str) -> Failure:
    """The failure a reply reports (its hospital id when the client named it)."""
    reason = str(message.error.reason) if message.has_error() else "no content"
    match = HOSPITAL_ERROR_TAG.search(reason)
    return Failure(
        hospital_id=int(match.group(1)) if match else None,
        phase=phase,
        error=reason.strip().splitlines()[-1][:500] if reason.strip() else reason,
        node_id=message.metadata.src_node_id,
        round=server_round,
        reason=failure_cause(int(message.error.code), reason) if message.has_error() else ERROR,
    )


def version_key(name: str) -> str:
    return f"{VERSION_PREFIX}{name}"


def evaluation_content(versions: dict[str, tuple[ArrayRecord, dict[str, Any]]], experiment_json: str) -> RecordDict:
    """One evaluate message holding every model version (batched: one message per hospital)."""
    content = RecordDict(
        {CONFIG: instructions(experiment_json, versions=json.dumps({n: meta for n, (_, meta) in versions.items()}))}
    )
    for name, (arrays, _) in versions.items():
        content[version_key(name)] = arrays
    return content
