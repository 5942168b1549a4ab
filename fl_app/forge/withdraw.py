"""`forge withdraw`: a new version equal to the merge without one hospital.

Linear versions (task arithmetic, MedForge-Fusion in delta form, untruncated) are revised on their
own factors (`factored`), touching no other hospital's adapter; every other method (TIES, DARE,
magnitude pruning, KnOTS, FedIT, Mixture, truncated merges) is recomputed from the stored adapters
of the hospitals that remain, with the same method, parameters and weighting rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fl_app.adapter_keys import is_lora_key
from fl_app.forge.diff import delta_changes
from fl_app.forge.factored import common_ratio, members_rank, revise_heads, revise_lora
from fl_app.forge.recipe import FUSION, Recipe, build, recipe_of, revised_coefficients, with_coefficients
from fl_app.forge.versions import (
    check_new_name,
    commit,
    evaluate,
    find_hospital,
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
    hospital: StoredHospital,
    replacement: StoredHospital | None,
    name: str,
    extra: dict[str, Any],
    allow_factored: bool = True,
) -> ModelVersion:
    """The version `new` describes, by the factored path where exact, else rebuilt from stored adapters.

    `hospital` leaves (its stored adapter), `replacement` (a recommit) takes its place, or nobody.
    """
    members = new.hospitals
    truncated = bool(entry.get("relative_error")) or recipe.rank is not None
    ratio = common_ratio(recipe, new, [h for h in members if h != hospital.id])
    if allow_factored and recipe.linear and not truncated and ratio is not None:
        state = version_state(run, entry)
        scale = recipe.scale if recipe.method != FUSION else 1.0
        terms = [(hospital, -ratio * scale * recipe.coefficients[hospital.id])]
        if replacement is not None:
            terms.append((replacement, scale * new.coefficients[hospital.id]))
        ranks = {h.id: h.r for h in run.hospitals} | ({hospital.id: replacement.r} if replacement else {})
        lora, rank, dropped = revise_lora(state, version_scale(entry), terms, ratio, members_rank(ranks, members))
        tasks = {h.id: h.task for h in run.hospitals}
        heads = revise_heads(state, recipe, new, hospital, replacement, tasks)
        details = new.details() | extra
        details["forge"] = details["forge"] | {"path": "factored", "compression_error": dropped}
        if recipe.method != FUSION:
            details |= {"params": new.params, "exact": True, "relative_error": 0.0, "rank": rank}
        return ModelVersion(name, "merged", {**lora, **heads}, rank, rank, details)
    by_id = {h.id: h for h in run.hospitals} | ({hospital.id: replacement} if replacement else {})
    extra = extra | {"forge": extra["forge"] | {"path": "recomputed"}}
    return build(run, new, name, [by_id[h] for h in members], **extra)


def withdrawn_version(
    run: StoredRun, parent: str, hospital_id: int, name: str | None = None, allow_factored: bool = True
) -> ModelVersion:
    """Version `parent` without hospital `hospital_id` (not evaluated, not saved)."""
    entry = find_version(run.results, parent, run.folder)
    recipe = recipe_of(run, entry)
    members = _members(recipe, hospital_id, parent)
    hospital = find_hospital(run, hospital_id)
    n_train = {h.id: h.n_train for h in run.hospitals}
    new = with_coefficients(recipe, revised_coefficients(recipe, members, n_train))
    extra = {
        "parent": parent,
        "withdrawn": [hospital_id],
        "label": f"{entry.get('label') or entry['name']} without hospital {hospital_id}",
        "forge": forge_record("withdraw"),
    }
    return revised_version(
        run, entry, recipe, new, hospital, None, name or f"{parent}-without-{hospital_id}", extra, allow_factored
    )


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
            f"{task} ACC {fmt(m.get('acc'))} AUC {fmt(m.get('auc'))}" for task, m in (entry.get("per_task") or {}).items()
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
