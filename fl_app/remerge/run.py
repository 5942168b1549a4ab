"""Re-merge a finished run's hospital adapters and add the new versions to it, never touching the old ones.

Order: plan and check every name, merge, evaluate, and only then write: the adapters are staged
and moved into adapters/<name>/, and results.json is rewritten atomically with the original
versions exactly as they were, the new ones appended. A failure before that writes nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fl_app.remerge.evaluate import evaluate_at_hospitals
from fl_app.remerge.plan import MergeRequest
from fl_app.remerge.stored import StoredHospital, StoredRun
from fl_app.server.evaluation import evaluation_fields
from fl_app.server.results import RESULTS_FILE, version_entry, write_results
from fl_app.server.versions import save_mixture, save_version, version_provenance
from strategies.merging import Submission, get_merge_method, hospital_weights, merge_hospital_adapters
from strategies.merging.stats_screen import gram_share_problems, stats_problems
from strategies.outcome import ModelVersion, merged_version
from strategies.screening import max_share, screen_settings

logger = logging.getLogger("medforge.remerge")


def _check_names(run: StoredRun, requests: Sequence[MergeRequest], force: bool) -> None:
    """A new name is free; an existing one may be replaced (--force) only if remerge made it."""
    existing = {v["name"]: v for v in run.results["versions"]}
    for request in requests:
        old = existing.get(request.name)
        if old is None:
            continue
        if "remerge" not in old:
            raise ValueError(
                f"version {request.name!r} is one of the run's own versions; remerge never replaces those. Choose another --name."
            )
        if not force:
            raise ValueError(
                f"version {request.name!r} already exists in {run.folder / RESULTS_FILE}; pass --force to replace it, or choose another --name."
            )


def stats_screened(run: StoredRun, method: str) -> tuple[list[StoredHospital], list[dict[str, Any]]]:
    """The stored hospitals a data-aware method may merge: their statistics screened as a run screens them
    (`strategies.merging.stats_screen`, the run's `strategy.screen` bounds); the others, each with its reason."""
    kind = get_merge_method(method).stats
    if kind is None:
        return list(run.hospitals), []
    settings = screen_settings(run.experiment.strategy)
    problems = {
        h.id: stats_problems(h.state, h.stats, (kind,), settings) if h.stats else [("<stats>", "none stored")]
        for h in run.hospitals
    }
    if all(p == [("<stats>", "none stored")] for p in problems.values()):
        raise ValueError(
            f"merge method {method!r} reads the hospitals' {kind!r} statistics and {run.folder} stored none: "
            f"run the experiment with strategy.stats=[{kind}] (the statistics are kept beside each adapter)"
        )
    if kind == "gram":
        passed = {
            h.id: Submission(h.id, h.task, h.state, h.r, h.alpha, h.stats) for h in run.hospitals if not problems[h.id]
        }
        for hospital_id, listed in gram_share_problems(passed, settings).items():
            problems[hospital_id] += listed
    left_out = [
        {"hospital": h.id, "problems": [f"{key}: {problem}" for key, problem in problems[h.id]]}
        for h in run.hospitals
        if problems[h.id]
    ]
    for entry in left_out:
        logger.warning("%s: hospital %s left out: %s", method, entry["hospital"], "; ".join(entry["problems"]))
    kept = [h for h in run.hospitals if not problems[h.id]]
    if not kept:
        raise ValueError(f"merge method {method!r}: no hospital's {kind!r} statistics passed the screen: {left_out}")
    return kept, left_out


def merge_version(run: StoredRun, request: MergeRequest) -> ModelVersion:
    """One re-merged version of the run's hospital adapters (a data-aware method: those whose statistics pass)."""
    started = time.perf_counter()
    hospitals, left_out = stats_screened(run, request.method)
    weights = hospital_weights(
        [h.id for h in hospitals],
        [h.n_train for h in hospitals],
        request.weighting,
        request.weights,
        max_share=max_share(run.experiment.strategy),  # the run's cap on what a reported count buys
    )
    logger.info(
        "Merging %d hospital adapters with %s (weights %s)",
        len(hospitals),
        request.label,
        [round(w, 3) for w in weights],
    )
    merged = merge_hospital_adapters(
        hospitals,
        weights,
        scale=request.scale,
        rank=request.rank,
        method=request.method,
        params=request.params,
    )
    remerge = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "explicit_params": request.params,
        "merge_rank": request.rank,
        "merge_seconds": time.perf_counter() - started,  # screening the statistics (if any) and merging
    }
    if left_out:
        remerge["left_out"] = left_out
    return merged_version(
        request.name,
        merged,
        [h.id for h in hospitals],
        weights,
        label=request.label,
        weighting=request.weighting,
        scale=request.scale,
        remerge=remerge,
    )


def _stage_adapters(
    run: StoredRun, versions: Sequence[ModelVersion], staging: Path, components: Mapping[str, ModelVersion]
) -> None:
    for version in versions:
        if version.mixture is not None:
            save_mixture(staging / version.name, run.experiment, version, components, version_provenance(version))
        else:
            save_version(staging / version.name, run.experiment, version, version_provenance(version))


def _install_adapters(run: StoredRun, staging: Path, names: Sequence[str]) -> None:
    """Move staged adapters into adapters/<name>/ (a replaced remerge folder is removed only after)."""
    for name in names:
        target = run.folder / "adapters" / name
        old = None
        if target.exists():
            old = target.with_name(f".{name}.replaced-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging / name, target)
        if old is not None:
            shutil.rmtree(old)


def add_versions(
    run: StoredRun,
    versions: Sequence[ModelVersion],
    entries: Sequence[dict[str, Any]],
    components: Mapping[str, ModelVersion] | None = None,
) -> None:
    """Save `versions` under adapters/<name>/ and append their `entries` to results.json, or write nothing.

    An entry of the same name is replaced (callers decide whether that is allowed); `components`
    are the versions a mixture's components are (its hospitals' adapters).
    """
    results_path = run.folder / RESULTS_FILE
    (run.folder / "adapters").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=run.folder / "adapters", prefix=".staging-") as staging:
        _stage_adapters(run, versions, Path(staging), components or {})
        if results_path.read_text() != run.results_text:  # checked again by write_results below
            raise RuntimeError(
                f"{results_path} changed while this command ran (another remerge or forge?); nothing was written. Run it again."
            )
        _install_adapters(run, Path(staging), [v.name for v in versions])
    names = {e["name"] for e in entries}
    kept = [v for v in run.results["versions"] if v["name"] not in names]
    write_results(run.folder, {**run.results, "versions": kept + list(entries)})


def remerge(
    run: StoredRun, requests: Sequence[MergeRequest], *, force: bool = False, data_root: str | None = None
) -> list[dict[str, Any]]:
    """Merge, evaluate and add one version per request to the run; return the new results entries."""
    _check_names(run, requests, force)
    experiment = run.experiment if data_root is None else OmegaConf.merge(run.experiment, {"data": {"root": data_root}})
    versions = [merge_version(run, request) for request in requests]
    recorded = {int(h["id"]): h for h in run.results.get("hospitals", [])}
    scores = evaluate_at_hospitals(experiment, versions, run.evaluated_hospitals, recorded)
    entries = [{**version_entry(v), **evaluation_fields(scores, v.name)} for v in versions]
    add_versions(run, versions, entries)
    for entry in entries:
        logger.info(
            "Added version %s: mean ACC %s, mean AUC %s",
            entry["name"],
            _fmt(entry["mean_acc"]),
            _fmt(entry["mean_auc"]),
        )
    return entries


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
