"""`forge log` and `forge show`: a run's versions as a history, one line each or one in full.

Reads results.json only. Who a version adds or removes comes from its provenance: a hospital's
own adapter is that hospital's commit; a progressive version adds the hospital that arrived to its
predecessor; a merge adds the hospitals it merged; a forge version names its parent and the
hospitals it withdrew (-) or re-committed (~).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fl_app.forge.versions import find_version, fmt

METRIC_FIELDS = ("per_task", "mean_acc", "mean_auc", "per_hospital", "inference")


def parent_of(entry: Mapping[str, Any], versions: Sequence[Mapping[str, Any]]) -> str | None:
    """The version this one was made from: a forge parent, or a progressive predecessor, or none."""
    if entry.get("parent"):
        return str(entry["parent"])
    if entry.get("kind") == "commit" and entry.get("replaces"):
        return str(entry["replaces"])  # a hospital's newer adapter follows its previous one
    if entry.get("kind") == "progressive" and int(entry.get("step", 1)) > 1:
        for other in versions:
            same_chain = other.get("method") == entry.get("method") and other.get("kind") == "progressive"
            if same_chain and int(other.get("step", 0)) == int(entry["step"]) - 1:
                return str(other["name"])
    if entry.get("kind") == "fedavg" and int(entry.get("round", 1)) > 1:
        return f"fedavg-round-{int(entry['round']) - 1}"
    return None


def change_of(entry: Mapping[str, Any]) -> str:
    """Who the version adds (+), removes (-) or re-commits (~)."""
    if entry.get("withdrawn"):
        return "-" + ",".join(map(str, entry["withdrawn"]))
    if entry.get("recommitted"):
        return "~" + ",".join(map(str, entry["recommitted"]))
    if entry.get("kind") == "hospital":
        return f"+{entry.get('hospital')}"
    if entry.get("kind") == "commit":
        return f"~{entry.get('hospital')}"
    if entry.get("kind") == "progressive":
        return f"+{entry.get('hospital')}"
    merged = entry.get("hospitals") or list((entry.get("weights") or {}).keys()) or list(entry.get("mixture") or {})
    return "+" + ",".join(str(h).removeprefix("hospital-") for h in merged) if merged else ""


def _short(value: float) -> str:
    return f"{value:.3g}"


def method_of(entry: Mapping[str, Any]) -> str:
    """The method and its coefficients, compactly: `task_arithmetic w[0=.18 1=.19]`."""
    method = entry.get("method")
    if entry.get("kind") in ("hospital", "commit"):
        return f"own adapter r={entry.get('r')} ({entry.get('task')})"
    if method is None:
        return str(entry.get("label") or entry.get("kind") or "")
    if entry.get("weights"):
        coefficients = " ".join(f"{h}={_short(w)}" for h, w in entry["weights"].items())
        return f"{method} w[{coefficients}]"
    if entry.get("mixture"):
        coefficients = " ".join(f"{h.removeprefix('hospital-')}={_short(c)}" for h, c in entry["mixture"].items())
        return f"{method} c[{coefficients}]"
    if entry.get("coefficients") is not None:
        return f"{method} c[{' '.join(_short(c) for c in entry['coefficients'])}]"
    return str(method)


def log_lines(results: Mapping[str, Any]) -> list[str]:
    """Every version in order, one line each: name, kind, parent, change, method, mean ACC/AUC."""
    versions = results.get("versions", [])
    rows = [
        (
            str(v["name"]),
            str(v.get("kind", "")),
            parent_of(v, versions) or "-",
            change_of(v),
            method_of(v),
            f"ACC {fmt(v.get('mean_acc'))} AUC {fmt(v.get('mean_auc'))}",
        )
        for v in versions
    ]
    if not rows:
        return ["(no versions)"]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row[:4], widths)), row[5], row[4]]).rstrip()
        for row in rows
    ]


def show_lines(results: Mapping[str, Any], name: str, folder: str = "the run") -> list[str]:
    """One version in full: provenance, metrics per task and per hospital."""
    entry = find_version(results, name, folder)
    versions = results.get("versions", [])
    lines = [
        f"version   {entry['name']}  ({entry.get('kind')})",
        f"adapter   {entry.get('adapter')}  r={entry.get('r')} lora_alpha={entry.get('lora_alpha')}",
        f"parent    {parent_of(entry, versions) or '-'}",
        f"change    {change_of(entry) or '-'}",
        f"method    {method_of(entry)}",
        f"mean      ACC {fmt(entry.get('mean_acc'))}  AUC {fmt(entry.get('mean_auc'))}",
    ]
    for task, metrics in (entry.get("per_task") or {}).items():
        lines.append(
            f"task      {task}: ACC {fmt(metrics.get('acc'))} AUC {fmt(metrics.get('auc'))} "
            f"({metrics.get('n_test')} test images, {metrics.get('hospitals')} hospital(s))"
        )
    for hospital, metrics in (entry.get("per_hospital") or {}).items():
        lines.append(
            f"hospital  {hospital} ({metrics.get('task')}): ACC {fmt(metrics.get('acc'))} AUC {fmt(metrics.get('auc'))} "
            f"on {metrics.get('n_test')} test images"
        )
    provenance = {k: v for k, v in entry.items() if k not in METRIC_FIELDS}
    lines.append("provenance " + json.dumps(provenance, indent=2, sort_keys=False))
    return lines
