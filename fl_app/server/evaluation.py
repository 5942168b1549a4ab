"""Federated evaluation of model versions: one message per hospital carrying the versions it scores."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import Message, RecordDict

from fl_app.failures import REJECTED, Failure
from fl_app.model.adapter import state_to_arrayrecord
from fl_app.pooled_auc import AUC_BINS, auc_from_histograms, dense_histograms
from fl_app.protocol import HOSPITAL, METRICS, evaluation_content, reply_failure
from fl_app.server.evaluation_plan import keep_planned, scored_versions, versions_for_hospital
from strategies.outcome import ModelVersion


@dataclass(frozen=True)
class HospitalScores:
    """One hospital's test metrics for every version it evaluated."""

    hospital_id: int
    task: str
    n_test: int
    metrics: dict[str, float]


def evaluation_messages(
    versions: Sequence[ModelVersion],
    experiment_json: str,
    node_ids: Iterable[int],
    *,
    hospital_of_node: Mapping[int, int],
    cross: bool,
) -> list[Message]:
    """One evaluate message per node with the versions its hospital scores (`evaluation_plan`).

    Each version's arrays are built once and shared by every message that carries them, so the
    server holds one copy of each version whatever N is.
    """
    records = {v.name: (state_to_arrayrecord(v.state), version_meta(v)) for v in versions}
    messages = []
    for node in node_ids:
        planned = versions_for_hospital(versions, hospital_of_node.get(node), cross)
        content = evaluation_content({v.name: records[v.name] for v in planned}, experiment_json)
        messages.append(Message(content=content, dst_node_id=node, message_type="evaluate"))
    return messages


def planned_scores(
    scores: Sequence[HospitalScores], versions: Sequence[ModelVersion], cross: bool
) -> list[HospitalScores]:
    """Each hospital's scores of the versions it was meant to score (mixture components it ran are dropped)."""
    return [keep_planned(s, scored_versions(versions, s.hospital_id, cross)) for s in scores]


def versions_content(versions: Sequence[ModelVersion], experiment_json: str) -> RecordDict:
    """What every hospital receives to evaluate: all versions in one record dict."""
    return evaluation_content(
        {v.name: (state_to_arrayrecord(v.state), version_meta(v)) for v in versions}, experiment_json
    )


def version_meta(version: ModelVersion) -> dict[str, Any]:
    """What a hospital needs besides the tensors: LoRA shape, tasks it can score, mixture components."""
    meta: dict[str, Any] = {"r": version.r, "alpha": version.alpha, "tasks": version.tasks}
    if version.mixture is not None:
        meta["mixture"] = version.mixture
    return meta


def inference_cost(scores: Sequence[HospitalScores], version: str) -> dict[str, float] | None:
    """Forward passes per image and measured seconds per test image of a version, over the hospitals."""
    rows = [s for s in scores if f"{version}/seconds" in s.metrics]
    images = sum(s.n_test for s in rows)
    if not images:
        return None
    return {
        "forward_passes_per_image": max(s.metrics[f"{version}/forward-passes"] for s in rows),
        "seconds_per_image": sum(s.metrics[f"{version}/seconds"] for s in rows) / images,
    }


def hospital_scores(content: RecordDict) -> HospitalScores:
    """Decode one hospital's evaluate reply content (what `Hospital.evaluate` returns).

    Each version's sparse score histograms (`auc-bins`, `auc-counts`, `auc-size`) become one dense
    array under `<version>/auc-hist`.
    """
    info = content[HOSPITAL]
    raw = content[METRICS]
    metrics: dict[str, Any] = {
        k: float(v) for k, v in raw.items() if not isinstance(v, list) and not k.endswith("/auc-size")
    }
    for key in raw:
        if key.endswith("/auc-size"):
            version = key[: -len("/auc-size")]
            metrics[f"{version}/auc-hist"] = dense_histograms(
                raw[f"{version}/auc-bins"], raw[f"{version}/auc-counts"], int(raw[key])
            )
    return HospitalScores(int(info["hospital-id"]), str(info["task"]), int(info["n-test"]), metrics)


def decode_scores(
    replies: Iterable[Message], bound: Mapping[int, int] | None = None
) -> tuple[list[HospitalScores], list[Failure], dict[int, int]]:
    """Each hospital's scores, the failures, and node id -> hospital id of the nodes that answered.

    `bound` (node id -> hospital id the server trusts): a reply claiming a hospital bound to
    another node is refused, so an impostor's scores are never pooled."""
    bound = dict(bound or {})
    owner = {hospital: node for node, hospital in bound.items()}
    scores, failures, answered = [], [], {}
    for reply in replies:
        if reply.has_error():
            failures.append(reply_failure(reply, 0, "evaluate"))
            continue
        hospital = hospital_scores(reply.content)
        node = reply.metadata.src_node_id
        claimed_by = owner.get(hospital.hospital_id, node)
        if claimed_by != node or bound.get(node, hospital.hospital_id) != hospital.hospital_id:
            error = f"node {node} claims hospital-id={hospital.hospital_id}, bound to node {claimed_by}; its scores are refused"
            failures.append(Failure(hospital.hospital_id, "evaluate", error, node_id=node, round=0, reason=REJECTED))
            continue
        answered[node] = hospital.hospital_id
        scores.append(hospital)
    return scores, failures, answered


def per_task_metrics(scores: Sequence[HospitalScores], version: str) -> dict[str, dict[str, float | None]]:
    """Pool a version's metrics over the hospitals of each task.

    ACC is weighted by test examples (equal to ACC on the union of the hospitals' test splits);
    AUC comes from the summed score histograms (the AUC of the union, up to ties in a bin).
    """
    per_task: dict[str, dict[str, float | None]] = {}
    for task in sorted({s.task for s in scores}):
        rows = [s for s in scores if s.task == task and f"{version}/acc" in s.metrics]
        if not rows:
            continue
        n = sum(r.n_test for r in rows)
        acc = sum(r.metrics[f"{version}/acc"] * r.n_test for r in rows) / n
        histograms = sum(r.metrics[f"{version}/auc-hist"].reshape(-1, 2, AUC_BINS) for r in rows)
        auc = auc_from_histograms(histograms)
        per_task[task] = {"acc": acc, "auc": auc, "n_test": n, "hospitals": len(rows)}
    return per_task


def per_hospital_metrics(scores: Sequence[HospitalScores], version: str) -> dict[str, dict[str, float | None]]:
    """A version's metrics at each hospital (what the per-task figures pool)."""
    return {
        str(s.hospital_id): {
            "task": s.task,
            "acc": s.metrics[f"{version}/acc"],
            "auc": s.metrics.get(f"{version}/auc"),
            "n_test": s.n_test,
        }
        for s in sorted(scores, key=lambda s: s.hospital_id)
        if f"{version}/acc" in s.metrics
    }


def evaluation_fields(scores: Sequence[HospitalScores], version: str) -> dict[str, Any]:
    """A version's metrics as its results.json entry holds them (a run's and a re-merge's alike)."""
    per_task = per_task_metrics(scores, version)
    return {
        "per_task": per_task,
        "mean_acc": mean_over_tasks(per_task, "acc"),
        "mean_auc": mean_over_tasks(per_task, "auc"),
        "per_hospital": per_hospital_metrics(scores, version),
        "inference": inference_cost(scores, version),
    }


def mean_over_tasks(per_task: dict[str, dict[str, float | None]], metric: str) -> float | None:
    """Unweighted mean over tasks (each task counts once, as MedForge reports)."""
    values = [m[metric] for m in per_task.values() if m[metric] is not None and not math.isnan(m[metric])]
    return sum(values) / len(values) if values else None
