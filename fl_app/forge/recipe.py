"""How a version was made, as one coefficient per contributing hospital: what withdraw, recommit
and credit change and rebuild.

Three families: a registered merge (`strategies.merging`, weights from a weighting rule), MedForge-
Fusion (searched coefficients on each ΔW_i, unrolled along the progressive chain) and
MedForge-Mixture (coefficients on each hospital's output). Rebuilding a recipe from the stored
hospital adapters is the from-scratch merge every exactness test compares with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from safetensors.torch import load_file

from fl_app.adapter_keys import adapter_state, lora_state
from fl_app.model.adapter import load_stats
from fl_app.remerge.stored import ADAPTER_FILE, StoredHospital, StoredRun
from strategies.medforge.branches import task_heads
from strategies.medforge.fusion import fuse
from strategies.merging import (
    MERGE_METHODS,
    get_merge_method,
    hospital_weights,
    merge_hospital_adapters,
    merge_weights,
    split_lora_modules,
    task_arithmetic,
)
from strategies.outcome import ModelVersion, merged_version

FUSION, MIXTURE = "medforge_fusion", "medforge_mixture"
WEIGHTING_RULES = ("num_examples", "uniform")  # tried in this order when a version does not say its weighting


@dataclass(frozen=True)
class Recipe:
    """A version as Σ_i coefficient_i · (hospital i's contribution), plus what the family needs to rebuild it."""

    method: str  # a registered merge method, medforge_fusion or medforge_mixture
    coefficients: dict[int, float]  # hospital id -> its weight (merge) or coefficient (fusion, mixture)
    weighting: str | None = None  # merge: uniform | num_examples | explicit; None: coefficients stay as they are
    scale: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)  # explicit merge parameters (bound ones left out)
    rank: int | None = None  # merge_rank: None is lossless
    form: str = "delta"  # fusion: delta | factors
    r: int | None = None  # mixture: the components' LoRA shape
    alpha: float | None = None
    sources: dict[int, str] = field(
        default_factory=dict
    )  # hospital id -> the commit version of its adapter, if not hospital-<id>

    @property
    def hospitals(self) -> list[int]:
        return list(self.coefficients)

    @property
    def linear(self) -> bool:
        """Exactly Σ c_i s_i B_i A_i with no truncation: withdraw and recommit work on the version's own factors."""
        if self.method == FUSION:
            return self.form == "delta"
        if self.method == MIXTURE:
            return False
        return MERGE_METHODS[self.method].fn is task_arithmetic and self.rank is None

    def details(self) -> dict[str, Any]:
        """What a forge-made version records so that the next withdraw or recommit reads it back."""
        details: dict[str, Any] = {"method": self.method, "hospitals": self.hospitals}
        if self.sources:
            details["sources"] = {str(h): name for h, name in self.sources.items()}
        if self.method in (FUSION, MIXTURE):
            details["coefficients"] = list(self.coefficients.values())
            if self.method == FUSION:
                details |= {"level": "whole", "form": self.form}
            return details
        return details | {
            "weights": {str(h): w for h, w in self.coefficients.items()},
            "weighting": self.weighting,
            "scale": self.scale,
            "merge_rank": self.rank,
        }


def _hospital_n_train(run: StoredRun) -> dict[int, int]:
    return {h.id: h.n_train for h in run.hospitals}


def committed_hospital(run: StoredRun, name: str) -> StoredHospital:
    """A hospital's adapter that `recommit` added as version `name` (kind commit)."""
    entry = next((v for v in run.results["versions"] if v["name"] == name), None)
    if entry is None or entry.get("kind") != "commit":
        raise ValueError(
            f"{run.folder} has no committed adapter {name!r} (a version of kind 'commit' that recommit adds)."
        )
    path = run.folder / entry["adapter"] / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the committed adapter {name!r} of {run.folder} is gone.")
    task = str(entry["task"])
    state = adapter_state(load_file(path), [task])
    return StoredHospital(
        int(entry["hospital"]),
        task,
        int(entry["n_train"]),
        state,
        int(entry["r"]),
        float(entry["lora_alpha"]),
        load_stats(path.parent),
    )


def members_of(run: StoredRun, recipe: Recipe) -> dict[int, StoredHospital]:
    """The adapters a version's hospitals contributed: the stored ones, or those a recommit replaced them with."""
    stored = {h.id: h for h in run.hospitals}
    members = {}
    for hospital in recipe.hospitals:
        if hospital in recipe.sources:
            members[hospital] = committed_hospital(run, recipe.sources[hospital])
        elif hospital in stored:
            members[hospital] = stored[hospital]
        else:
            raise ValueError(f"hospital {hospital} of this version has no stored adapter in {run.folder}.")
    return members


def _component_hospital(component: str) -> int:
    """The hospital of a mixture component: `hospital-<id>`, or a recommitted `hospital-<id>.<n>`."""
    return int(component.removeprefix("hospital-").split(".")[0])


def _infer_weighting(weights: Mapping[int, float], n_train: Mapping[int, int]) -> str:
    """The rule that gives these weights (a run's merged version does not record it), else explicit."""
    ids = list(weights)
    for rule in WEIGHTING_RULES:
        if all(k in n_train for k in ids):
            expected = merge_weights([n_train[k] for k in ids], rule)
            if all(math.isclose(weights[k], w, rel_tol=1e-9, abs_tol=1e-12) for k, w in zip(ids, expected)):
                return rule
    return "explicit"


def _fusion_coefficients(results: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[int, float]:
    """Each hospital's coefficient on its s_i B_i A_i: one-shot as stored; progressive unrolled along v1..vN."""
    if entry.get("level", "whole") != "whole":
        raise ValueError(
            f"version {entry['name']!r} is MedForge-Fusion at level {entry.get('level')!r} (one coefficient per module); "
            "forge handles level 'whole' only."
        )
    if "hospitals" in entry:
        return {int(h): float(c) for h, c in zip(entry["hospitals"], entry["coefficients"])}
    chain = sorted(
        (v for v in results["versions"] if v.get("method") == FUSION and v.get("kind") == "progressive"),
        key=lambda v: int(v["step"]),
    )
    coefficients: dict[int, float] = {}
    for version in chain:
        if int(version["step"]) > int(entry["step"]):
            break
        if not coefficients:
            coefficients = {int(version["hospital"]): float(version["coefficients"][0])}
            continue
        old, new = (float(c) for c in version["coefficients"])  # main <- old · main + new · arriving
        coefficients = {h: old * c for h, c in coefficients.items()} | {int(version["hospital"]): new}
    return coefficients


def recipe_of(run: StoredRun, entry: Mapping[str, Any]) -> Recipe:
    """The recipe of a version of the run (its results.json entry), or a ValueError saying why there is none."""
    recipe = _recipe_of(run, entry)
    sources = {int(h): str(v) for h, v in (entry.get("sources") or {}).items() if int(h) in recipe.coefficients}
    return replace(recipe, sources=sources)


def _recipe_of(run: StoredRun, entry: Mapping[str, Any]) -> Recipe:
    name, method = entry["name"], entry.get("method")
    if entry.get("kind") in ("hospital", "commit"):
        raise ValueError(
            f"version {name!r} is hospital {entry.get('hospital')}'s own adapter, not a merge; "
            "withdraw, recommit and credit work on merged versions (e.g. 'merged')."
        )
    if method is None:
        raise ValueError(
            f"version {name!r} (kind {entry.get('kind')!r}) records no merge method; "
            "forge works on merged versions with provenance (one_shot, medforge, remerge or forge versions)."
        )
    if method == MIXTURE:
        coefficients = {_component_hospital(k): float(c) for k, c in entry["mixture"].items()}
        return Recipe(MIXTURE, coefficients, r=int(entry["r"]), alpha=float(entry["lora_alpha"]))
    if method == FUSION:
        return Recipe(FUSION, _fusion_coefficients(run.results, entry), form=str(entry.get("form", "delta")))
    registered = get_merge_method(method)  # unknown -> ValueError listing the methods
    weights = {int(k): float(w) for k, w in entry["weights"].items()}
    strategy = run.experiment.get("strategy", {}) if run.experiment is not None else {}
    own = entry["name"] == "merged"  # the run's own merge: its settings are the strategy's
    if "remerge" in entry:
        rank = entry["remerge"].get("merge_rank")
    elif "merge_rank" in entry:
        rank = entry["merge_rank"]
    else:
        rank = strategy.get("merge_rank") if own else None
    scale = entry.get("scale", strategy.get("scale", 1.0) if own else 1.0)
    return Recipe(
        registered.name,
        weights,
        weighting=entry.get("weighting") or _infer_weighting(weights, _hospital_n_train(run)),
        scale=float(scale),
        params={k: v for k, v in (entry.get("params") or {}).items() if k not in registered.bound},
        rank=None if rank is None else int(rank),
    )


def revised_coefficients(
    recipe: Recipe, members: Sequence[int], n_train: Mapping[int, int], new: Mapping[int, float] | None = None
) -> dict[int, float]:
    """The coefficients over `members` after a change: a weighting rule re-applied, else the old ones (`new` for a recommit)."""
    if recipe.weighting in (None, "explicit"):
        return {h: float((new or {}).get(h, recipe.coefficients[h])) for h in members}
    return dict(zip(members, hospital_weights(list(members), [n_train[h] for h in members], recipe.weighting)))


def build(run: StoredRun, recipe: Recipe, name: str, hospitals: Sequence[StoredHospital], **extra: Any) -> ModelVersion:
    """The version a recipe gives over `hospitals` (their stored or newly committed adapters), from scratch."""
    ids = [h.id for h in hospitals]
    coefficients = [recipe.coefficients[h] for h in ids]
    details = recipe.details() | extra
    if recipe.method == MIXTURE:
        return ModelVersion(
            name,
            "merged",
            dict(task_heads(hospitals)),
            int(recipe.r),
            float(recipe.alpha),
            details,
            mixture={recipe.sources.get(h, f"hospital-{h}"): c for h, c in zip(ids, coefficients)},
        )
    if recipe.method == FUSION:
        adapters = [split_lora_modules(lora_state(h.state), h.scale) for h in hospitals]
        state, rank = fuse(
            adapters, [{m: c for m in adapters[0]} for c in coefficients], recipe.form, like=hospitals[0].state
        )
        return ModelVersion(name, "merged", {**state, **task_heads(hospitals)}, rank, rank, details)
    result = merge_hospital_adapters(
        hospitals,
        coefficients,
        scale=recipe.scale,
        rank=recipe.rank,
        method=recipe.method,
        params=recipe.params,
    )
    details.pop("weights")  # merged_version records them
    return merged_version(name, result, ids, coefficients, **details)


def with_coefficients(recipe: Recipe, coefficients: Mapping[int, float]) -> Recipe:
    return replace(recipe, coefficients=dict(coefficients))


def dense_delta(state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Every LoRA module's ΔW = scale · B @ A as a matrix (flattened kernels): for tests and diffs of small modules."""
    return {m: f.delta() for m, f in split_lora_modules(lora_state(state), scale).items()}
