"""`forge diff`: how two versions differ, per LoRA module (ΔW relative change, cosine) and per task (metrics).

Norms and inner products come from the factors (thin QRs, r x r products): no d_out x d_in matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fl_app.adapter_keys import lora_state
from fl_app.forge.versions import find_version, fmt, version_scale, version_state
from fl_app.remerge.stored import load_stored_run
from strategies.merging import split_lora_modules
from strategies.merging.lowrank import lowrank_norm


@dataclass(frozen=True)
class ModuleChange:
    norm_first: float  # ||ΔW_1||_F
    norm_second: float
    relative_change: float  # ||ΔW_2 - ΔW_1||_F / ||ΔW_1||_F
    cosine: float  # <ΔW_1, ΔW_2> / (||ΔW_1|| ||ΔW_2||)


def delta_changes(
    first: Mapping[str, Tensor], first_scale: float, second: Mapping[str, Tensor], second_scale: float
) -> dict[str, ModuleChange]:
    """Per LoRA module present in both states: norms, relative change and cosine of ΔW = scale · B A."""
    a = split_lora_modules(lora_state(first), first_scale)
    b = split_lora_modules(lora_state(second), second_scale)
    missing = sorted(a.keys() ^ b.keys())
    if missing:
        raise ValueError(
            f"the two versions adapt different modules (only in one: {missing[:5]}); diff needs the same ones."
        )
    changes = {}
    for module in a:
        Ba, Aa = a[module].scale * a[module].B.double(), a[module].A.double()
        Bb, Ab = b[module].scale * b[module].B.double(), b[module].A.double()
        norm_a, norm_b = lowrank_norm(Ba, Aa), lowrank_norm(Bb, Ab)
        difference = lowrank_norm(torch.cat([Bb, -Ba], dim=1), torch.cat([Ab, Aa], dim=0))
        # <Ba Aa, Bb Ab> = tr(Aa^T Ba^T Bb Ab) = Σ (Ba^T Bb) ⊙ (Aa Ab^T)
        inner = ((Ba.T @ Bb) * (Aa @ Ab.T)).sum().item()
        changes[module] = ModuleChange(
            norm_a,
            norm_b,
            difference / norm_a if norm_a > 0 else math.inf,
            inner / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else math.nan,
        )
    return changes


def metric_changes(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per task: ACC and AUC of each version and the change (second - first); None where one lacks it."""
    tasks = sorted(set(first.get("per_task") or {}) | set(second.get("per_task") or {}))
    changes = {}
    for task in tasks:
        row: dict[str, float | None] = {}
        for metric in ("acc", "auc"):
            x = (first.get("per_task") or {}).get(task, {}).get(metric)
            y = (second.get("per_task") or {}).get(task, {}).get(metric)
            row[f"{metric}_first"], row[f"{metric}_second"] = x, y
            row[f"{metric}_change"] = None if x is None or y is None else y - x
        changes[task] = row
    return changes


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def diff(run_dir: Path, first: str, second: str) -> list[str]:
    """The diff report of versions `first` -> `second` of a run."""
    run = load_stored_run(run_dir)
    entries = [find_version(run.results, name, run.folder) for name in (first, second)]
    states = [version_state(run, e) for e in entries]
    changes = delta_changes(states[0], version_scale(entries[0]), states[1], version_scale(entries[1]))
    lines = [f"diff {first} -> {second}", "", "per task (second - first):"]
    for task, row in metric_changes(*entries).items():
        lines.append(
            f"  {task:16s} ACC {fmt(row['acc_first'])} -> {fmt(row['acc_second'])} ({_signed(row['acc_change'])})   "
            f"AUC {fmt(row['auc_first'])} -> {fmt(row['auc_second'])} ({_signed(row['auc_change'])})"
        )
    relative = sorted(c.relative_change for c in changes.values())
    cosines = [c.cosine for c in changes.values() if not math.isnan(c.cosine)]
    total_first = math.sqrt(sum(c.norm_first**2 for c in changes.values()))
    total_difference = math.sqrt(sum((c.relative_change * c.norm_first) ** 2 for c in changes.values()))
    lines += [
        "",
        f"ΔW over {len(changes)} modules: total relative change {total_difference / total_first:.4f}, "
        f"median {relative[len(relative) // 2]:.4f}, max {relative[-1]:.4f}; cosine min {min(cosines):.4f}, "
        f"mean {sum(cosines) / len(cosines):.4f}",
        "",
        f"  {'module':60s} {'|ΔW1|':>9s} {'|ΔW2|':>9s} {'rel.chg':>8s} {'cosine':>7s}",
    ]
    for module, change in changes.items():
        lines.append(
            f"  {module:60s} {change.norm_first:9.4f} {change.norm_second:9.4f} "
            f"{change.relative_change:8.4f} {change.cosine:7.4f}"
        )
    return lines
