"""`forge withdraw`: a new version equal to the merge without one hospital.

Linear versions (task arithmetic, MedForge-Fusion in delta form, untruncated) are revised on their
own factors (`factored`), touching no other hospital's adapter; every other method (TIES, DARE,
magnitude pruning, KnOTS, FedIT, Mixture, truncated merges) is recomputed from the stored adapters
of the hospitals that remain, with the same method, parameters and weighting rule.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fl_app.adapter_keys import is_lora_key
from fl_app.forge.diff import delta_changes
from fl_app.forge.factored import common_ratio, heads_revisable, members_rank, revise_heads, revise_lora
from fl_app.forge.recipe import (
    FUSION,
    Recipe,
    build,
    members_of,
    recipe_of,
    revised_coefficients,
    with_coefficients,
)
from fl_app.forge.versions import (
    check_new_name,
    commit,
    evaluate,
    find_version,
    fmt,
    forge_record,
    version_scale,
    version_state,
)
from fl_app.remerge.stored import StoredHospital, StoredRun, load_stored_run
from strategies.outcome import ModelVersion


def _members(recipe: Recipe, hospital: int, version: str) -> list[int]:
    if hospital not in recipe.coefficients:
        raise ValueError(
            f"hospital {hospital} is not part of version {version!r}; its hospitals are {recipe.hospitals}."
        )
    members = [h for h in recipe.hospitals if h != hospital]
    if not members:
        raise ValueError(
            f"hospital {hospital} is the only hospital of version {version!r}; withdrawing it leaves nothing to merge."
        )
    return members


def revised_version(
    run: StoredRun,
    entry: dict[str, Any],
    recipe: Recipe,
    new: Recipe,
    members: dict[int, StoredHospital],
    hospital_id: int,
    replacement: StoredHospital | None,
    name: str,
    extra: dict[str, Any],
    allow_factored: bool = True,
) -> ModelVersion:
    """The version `new` describes, by the factored path where exact, else rebuilt from the members' adapters.

    `members` are the parent's hospitals and their adapters; `hospital_id` leaves, and `replacement`
    (a recommit) takes its place, or nobody.
    """
    hospital = members[hospital_id]
    after = {h: m for h, m in members.items() if h != hospital_id} | (
        {hospital_id: replacement} if replacement is not None else {}
    )
    truncated = bool(entry.get("relative_error")) or recipe.rank is not None
    ratio = common_ratio(recipe, new, [h for h in new.hospitals if h != hospital_id])
    tasks = {h: m.task for h, m in members.items()}
    heads_ok = heads_revisable(recipe, new, hospital, tasks)
    if allow_factored and recipe.linear and not truncated and ratio is not None and heads_ok:
        state = version_state(run, entry)
        scale = recipe.scale if recipe.method != FUSION else 1.0
        terms = [(hospital, -ratio * scale * recipe.coefficients[hospital_id])]
        if replacement is not None:
            terms.append((replacement, scale * new.coefficients[hospital_id]))
        rank_needed = members_rank({h: m.r for h, m in after.items()}, new.hospitals)
        lora, rank, dropped = revise_lora(state, version_scale(entry), terms, ratio, rank_needed)
        heads = revise_heads(state, recipe, new, hospital, replacement, tasks)
        details = new.details() | extra
        details["forge"] = details["forge"] | {"path": "factored", "compression_error": dropped}
        if recipe.method != FUSION:
            details |= {"params": new.params, "exact": True, "relative_error": 0.0, "rank": rank}
        return ModelVersion(name, "merged", {**lora, **heads}, rank, rank, details)
    extra = extra | {"forge": extra["forge"] | {"path": "recomputed"}}
    return build(run, new, name, [after[h] for h in new.hospitals], **extra)


def withdrawn_version(
    run: StoredRun, parent: str, hospital_id: int, name: str | None = None, allow_factored: bool = True
) -> ModelVersion:
    """Version `parent` without hospital `hospital_id` (not evaluated, not saved)."""
    entry = find_version(run.results, parent, run.folder)
    recipe = recipe_of(run, entry)
    remaining = _members(recipe, hospital_id, parent)
    members = members_of(run, recipe)
    n_train = {h: m.n_train for h, m in members.items()}
    new = with_coefficients(recipe, revised_coefficients(recipe, remaining, n_train))
    new = replace(new, sources={h: v for h, v in recipe.sources.items() if h != hospital_id})
    extra = {
        "parent": parent,
        "withdrawn": [hospital_id],
        "label": f"{entry.get('label') or entry['name']} without hospital {hospital_id}",
        "forge": forge_record("withdraw"),
    }
    name = name or f"{parent}-without-{hospital_id}"
    return revised_version(run, entry, recipe, new, members, hospital_id, None, name, extra, allow_factored)


def withdraw(
    run_dir: Path,
    hospital_id: int,
    parent: str,
    name: str | None = None,
    verify: bool = False,
    data_root: str | None = None,
) -> list[str]:
    """The `withdraw` command: make, evaluate and add the version; with `verify`, compare it with a from-scratch merge."""
    run = load_stored_run(run_dir)
    version = withdrawn_version(run, parent, hospital_id, name)
    check_new_name(run, version.name)
    versions = [version]
    if verify:
        versions.append(withdrawn_version(run, parent, hospital_id, f"{version.name}.scratch", allow_factored=False))
    entries = evaluate(run, versions, data_root)
    commit(run, [version], entries[:1])
    parent_entry = find_version(run.results, parent, run.folder)
    lines = [f"{version.name}: {parent} without hospital {hospital_id} ({version.details['forge']['path']})"]
    lines += metric_lines({parent: parent_entry, version.name: entries[0]})
    if verify:
        lines += verify_lines(version, versions[1], entries[0], entries[1])
    return lines


def metric_lines(entries: dict[str, dict[str, Any]]) -> list[str]:
    """Per task ACC/AUC of each named entry, one line per version."""
    lines = []
    for name, entry in entries.items():
        tasks = "  ".join(
            f"{task} ACC {fmt(m.get('acc'))} AUC {fmt(m.get('auc'))}"
            for task, m in (entry.get("per_task") or {}).items()
        )
        lines.append(f"  {name:32s} mean ACC {fmt(entry.get('mean_acc'))} AUC {fmt(entry.get('mean_auc'))}   {tasks}")
    return lines


def verify_lines(version: ModelVersion, scratch: ModelVersion, entry: dict, scratch_entry: dict) -> list[str]:
    """How far the withdrawn version is from the from-scratch merge: ΔW per module, heads, metrics."""
    lines = []
    if version.mixture is None:
        changes = delta_changes(scratch.state, scratch.alpha / scratch.r, version.state, version.alpha / version.r)
        worst = max(c.relative_change for c in changes.values())
        heads = [
            (version.state[k].double() - t.double()).abs().max().item()
            for k, t in scratch.state.items()
            if not is_lora_key(k)
        ]
        lines.append(
            f"  vs from-scratch merge: max relative ΔW difference over {len(changes)} modules {worst:.2e}, "
            f"max head difference {max(heads, default=0.0):.2e}"
        )
    lines += metric_lines({"from scratch": scratch_entry})
    return lines
