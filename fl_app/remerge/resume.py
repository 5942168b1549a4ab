"""Resume an interrupted or failed run from what is on disk: the adapters its hospitals sent.

What can be resumed: a strategy whose spec can rebuild its versions from adapters
(`StrategySpec.round_versions`: one_shot, fedavg). Every hospital adapter the server received
before the run stopped is made into the versions the run would have made (one_shot: round 1,
screened and merged; fedavg: each round whose adapters all arrived, averaged again), and every
version is evaluated in this process on each hospital's test split (no Flower, no retraining),
then results.json says `completed` with a `resumed` record. What cannot: hospitals that never
delivered are not asked again (no training happens here), rounds that did not finish are not run,
and MedForge's progressive merges need calibration sets the server never stores (use
scripts/remerge.py on its adapters instead).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from fl_app.adapter_keys import adapter_state
from fl_app.model.adapter import load_stats
from fl_app.protocol import HospitalReply
from fl_app.remerge.evaluate import evaluate_at_hospitals
from fl_app.remerge.stored import ADAPTER_FILE, received_adapters
from fl_app.server.evaluation import evaluation_fields
from fl_app.server.results import RESULTS_FILE, read_results, version_entry, write_results
from fl_app.server.status import COMPLETED
from fl_app.server.versions import save_version, version_provenance
from strategies import STRATEGIES, StrategySpec, strategy_spec
from strategies.outcome import ModelVersion

logger = logging.getLogger("medforge.resume")


def received_hospitals(folder: Path, results: dict[str, Any], server_round: int) -> list[HospitalReply]:
    """The adapters of `server_round` as the server received them (received/), refused nodes left out."""
    hospitals = []
    for entry in received_adapters(results, server_round):
        hospital_id, task = int(entry["hospital"]), str(entry["task"])
        path = folder / entry["adapter"] / ADAPTER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: hospital {hospital_id}'s round-{server_round} adapter is lost."
            )
        hospitals.append(
            HospitalReply(
                node_id=entry.get("node_id"),
                hospital_id=hospital_id,
                task=task,
                n_train=int(entry["n_train"]),
                n_val=int(entry["n_val"]),
                n_test=int(entry["n_test"]),
                data_source=str(entry["data_source"]),
                metrics={},
                state=adapter_state(load_file(path), [task]),
                lora_r=int(entry["r"]),
                lora_alpha=float(entry["lora_alpha"]),
                stats=load_stats(path.parent),
            )
        )
    return hospitals


def rebuilt_versions(
    folder: Path, results: dict[str, Any], cfg: DictConfig, spec: StrategySpec
) -> tuple[list[ModelVersion], list[str]]:
    """The versions the run would have made of what it received, and what could not be rebuilt.

    A one-round strategy: round 1's adapters, whether or not the round finished. Otherwise each
    round that finished (all its replies in), in order, until one has fewer than `min_hospitals`."""
    rounds = spec.training_rounds(cfg.strategy)
    finished = [1] if spec.one_round else sorted({int(r) for r in results.get("train_metrics", {})})
    versions, rebuilt = [], 0
    for server_round in finished:
        hospitals = received_hospitals(folder, results, server_round)
        if not spec.one_round and len(hospitals) < int(cfg.strategy.min_hospitals):
            break
        versions += spec.versions_of_round(cfg, server_round, hospitals)
        rebuilt += 1
    if not versions:
        raise ValueError(f"{folder}: no round finished before the run stopped; nothing to resume from.")
    missing = [f"rounds {rebuilt + 1}..{rounds} were not trained (resume never trains)"] if rebuilt < rounds else []
    versions = [replace(v, details={**v.details, "resumed": True}) for v in versions]
    return versions, missing


def resume_run(folder: Path) -> Path:
    """Merge and evaluate what an interrupted or failed run received; say what could not be resumed."""
    folder = Path(folder).resolve()
    results = read_results(folder)
    if results is None or not (folder / "config.yaml").is_file():
        raise FileNotFoundError(f"{folder} is not a results folder (no {RESULTS_FILE} or config.yaml).")
    status = results.get("status")
    if status == COMPLETED:
        raise ValueError(f"{folder} completed; there is nothing to resume (scripts/remerge.py merges it other ways).")
    cfg = OmegaConf.load(folder / "config.yaml")
    spec = strategy_spec(cfg.strategy)
    if not spec.resumable:
        resumable = [name for name in STRATEGIES if strategy_spec(name).resumable]
        raise ValueError(
            f"{folder}: strategy={spec.name!r} cannot be resumed (only {resumable}): its versions cannot be rebuilt from "
            "the hospitals' adapters alone (MedForge's progressive merges need the calibration sets, which are never "
            "stored); scripts/remerge.py merges its received adapters."
        )
    if not results.get("received"):
        raise ValueError(f"{folder} received no adapter before it stopped ({status}); run the experiment again.")
    versions, not_resumed = rebuilt_versions(folder, results, cfg, spec)
    delivered = sorted({int(r["hospital"]) for r in received_adapters(results)})
    never = sorted(set(range(int(cfg.simulation.num_hospitals))) - set(delivered))
    if never:
        not_resumed.append(f"hospitals {never} never delivered an adapter and are not asked again (no training here)")
    for line in not_resumed:
        logger.warning("Not resumed: %s", line)
    recorded = {int(h["id"]): h for h in results.get("hospitals", [])}
    scores = evaluate_at_hospitals(cfg, versions, list(range(int(cfg.simulation.num_hospitals))), recorded)
    entries = []
    for version in versions:
        save_version(folder / "adapters" / version.name, cfg, version, version_provenance(version))
        entries.append({**version_entry(version), **evaluation_fields(scores, version.name)})
    results.update(
        versions=entries,
        status=COMPLETED,
        resumed={
            "from_status": status,
            "from_error": results.pop("error", None),
            "at": time.time(),
            "merged_from": "received/",
            "hospitals": delivered,
            "not_resumed": not_resumed,
        },
    )
    write_results(folder, results)
    return folder
