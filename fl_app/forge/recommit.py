"""`forge recommit`: hospital K's newer adapter replaces its old contribution to a version.

The new adapter is screened like any arrival (`strategies.screening`: layout, NaN/Inf, bounds,
norm and direction against the other members, clipping), kept as a version of kind `commit` (`hospital-<K>.<n>`, its own metrics), and the new
merge is made exactly like withdraw: on the version's own factors for linear merges
(ΔW' = a(ΔW − g c_K s_K B_K A_K) + g c'_K s'_K B'_K A'_K), else from the members' adapters.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from fl_app.adapter_keys import adapter_state, non_lora_state
from fl_app.adapter_layout import AdapterLayout
from fl_app.forge.recipe import members_of, recipe_of, revised_coefficients, with_coefficients
from fl_app.forge.versions import check_new_name, commit, evaluate, find_version, forge_record
from fl_app.forge.withdraw import metric_lines, revised_version
from fl_app.model.adapter import load_stats
from fl_app.remerge.stored import ADAPTER_FILE, StoredHospital, StoredRun, load_stored_run
from strategies.merging import Submission, screen_adapters
from strategies.outcome import ModelVersion
from strategies.screening import expected_layout, screen_settings


def read_adapter(path: Path, task: str) -> tuple[dict[str, torch.Tensor], int, float]:
    """A PEFT adapter folder (or its safetensors file beside adapter_config.json): LoRA + `task`'s head, r, alpha."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    tensors = path / ADAPTER_FILE if path.is_dir() else path
    config_path = folder / "adapter_config.json"
    if not tensors.is_file() or not config_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a PEFT adapter: it needs {ADAPTER_FILE} and adapter_config.json (PeftModel.save_pretrained writes both)."
        )
    config = json.loads(config_path.read_text())
    return adapter_state(load_file(tensors), [task]), int(config["r"]), float(config["lora_alpha"])


def commit_name(run: StoredRun, hospital_id: int) -> str:
    """The next free `hospital-<id>.<n>` (n from 2: hospital-<id> is the first commit)."""
    n = 2
    while f"hospital-{hospital_id}.{n}" in run.version_names:
        n += 1
    return f"hospital-{hospital_id}.{n}"


def screen_arrival(
    run: StoredRun, others: list[StoredHospital], arriving: StoredHospital, layout: AdapterLayout | None = None
) -> StoredHospital:
    """The new adapter as the run's screen would merge it (clipped where it clips), or a ValueError with its reason.

    The same screen as any arrival (`strategies.merging.screen_adapters` with the run's
    `strategy.screen`), against the layout the experiment's hospitals must send and the other members.
    """
    layout = layout or expected_layout(run.experiment)
    hospitals = [*others, arriving]
    result = screen_adapters(
        [Submission(h.id, h.task, h.state, h.r, h.alpha) for h in hospitals],
        layout,
        screen_settings(run.experiment.get("strategy", {})),
    )
    refused = [r for r in result.rejections if r.hospital_id == arriving.id]
    if refused:
        raise ValueError(f"hospital {arriving.id}'s new adapter fails screening: {'; '.join(map(str, refused))}.")
    screened = result.states[result.accepted.index(len(others))]
    return replace(arriving, state=dict(screened))


def recommitted_versions(
    run: StoredRun,
    parent: str,
    hospital_id: int,
    state: dict[str, torch.Tensor],
    r: int,
    alpha: float,
    n_train: int | None = None,
    name: str | None = None,
    stats: dict[str, torch.Tensor] | None = None,
) -> tuple[ModelVersion, ModelVersion]:
    """The committed adapter (kind commit) and version `parent` with it in place of the old one.

    `stats`: the new adapter's merge statistics (`merge_stats.safetensors` beside it), which a version
    merged by regmean or fisher needs; they are kept with the committed adapter.

    `state` is the new adapter as it will be merged: the `recommit` command screens it first (`screen_arrival`).
    """
    entry = find_version(run.results, parent, run.folder)
    recipe = recipe_of(run, entry)
    if hospital_id not in recipe.coefficients:
        raise ValueError(
            f"hospital {hospital_id} is not part of version {parent!r}; its hospitals are {recipe.hospitals}."
        )
    members = members_of(run, recipe)
    old = members[hospital_id]
    replacement = StoredHospital(hospital_id, old.task, int(n_train or old.n_train), state, r, alpha, dict(stats or {}))
    counts = {h: m.n_train for h, m in members.items()} | {hospital_id: replacement.n_train}
    new = with_coefficients(recipe, revised_coefficients(recipe, recipe.hospitals, counts))
    committed = commit_name(run, hospital_id)
    new = replace(new, sources=recipe.sources | {hospital_id: committed})
    extra = {
        "parent": parent,
        "recommitted": [hospital_id],
        "label": f"{entry.get('label') or entry['name']} with hospital {hospital_id} re-committed",
        "forge": forge_record("recommit", replaces=recipe.sources.get(hospital_id, f"hospital-{hospital_id}")),
    }
    version = revised_version(
        run, entry, recipe, new, members, hospital_id, replacement, name or f"{parent}-recommit-{hospital_id}", extra
    )
    details = {
        "hospital": hospital_id,
        "task": old.task,
        "n_train": replacement.n_train,
        "replaces": extra["forge"]["replaces"],
    }
    # like a hospital version: its own LoRA and head, other tasks' heads from the merge so every task scores
    own = ModelVersion(
        committed, "commit", {**non_lora_state(version.state), **state}, r, alpha, details, stats=replacement.stats
    )
    return own, version


def recommit(
    run_dir: Path,
    hospital_id: int,
    adapter: Path,
    parent: str,
    name: str | None = None,
    n_train: int | None = None,
    data_root: str | None = None,
) -> list[str]:
    """The `recommit` command: screen, merge, evaluate and add the committed adapter and the new version."""
    run = load_stored_run(run_dir)
    entry = find_version(run.results, parent, run.folder)
    recipe = recipe_of(run, entry)
    members = members_of(run, recipe)
    if hospital_id not in members:
        raise ValueError(
            f"hospital {hospital_id} is not part of version {parent!r}; its hospitals are {recipe.hospitals}."
        )
    state, r, alpha = read_adapter(adapter, members[hospital_id].task)
    stats = load_stats(Path(adapter) if Path(adapter).is_dir() else Path(adapter).parent)
    old = members[hospital_id]
    arriving = StoredHospital(hospital_id, old.task, int(n_train or old.n_train), state, r, alpha)
    screened = screen_arrival(run, [m for h, m in members.items() if h != hospital_id], arriving)
    own, version = recommitted_versions(run, parent, hospital_id, screened.state, r, alpha, n_train, name, stats)
    check_new_name(run, version.name)
    entries = evaluate(run, [own, version], data_root)
    commit(run, [own, version], entries)
    lines = [
        f"{version.name}: {parent} with hospital {hospital_id}'s adapter {own.name} ({version.details['forge']['path']})"
    ]
    return lines + metric_lines({parent: entry, own.name: entries[0], version.name: entries[1]})
