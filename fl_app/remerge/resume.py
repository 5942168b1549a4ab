"""Resume an interrupted or failed run from what is on disk: the adapters its hospitals sent.

What can be resumed: every hospital adapter the server received before the run stopped is
merged (one_shot: the run's own merge; fedavg: each round whose adapters all arrived is averaged
again, exactly as the run would have), and every version is evaluated in this process on each
hospital's test split (no Flower, no retraining), then results.json says `completed` with a
`resumed` record. What cannot: hospitals that never delivered are not asked again (no training
happens here), FedAvg rounds that did not finish are not run, and MedForge's progressive merges
need calibration sets the server never stores (use scripts/remerge.py on its adapters instead).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from fl_app.adapter_keys import adapter_state
from fl_app.protocol import HospitalReply
from fl_app.remerge.evaluate import evaluate_at_hospitals
from fl_app.remerge.stored import ADAPTER_FILE, received_adapters
from fl_app.server.evaluation import evaluation_fields
from fl_app.server.results import RESULTS_FILE, read_results, version_entry, write_json_atomic
from fl_app.server.versions import save_version, version_provenance
from strategies.fedavg import average_hospitals
from strategies.one_shot import one_shot_versions
from strategies.outcome import ModelVersion
from strategies.replies import require_enough
from strategies.screening import expected_layout, merge_hospitals, screen, weigh

logger = logging.getLogger("medforge.resume")
RESUMABLE = ("one_shot", "fedavg")


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
            )
        )
    return hospitals


def _one_shot(folder: Path, results: dict[str, Any], cfg: DictConfig) -> tuple[list[ModelVersion], list[str]]:
    """The run's own merge of the received adapters, screened as the run would have."""
    strategy = cfg.strategy
    hospitals, failures, _ = screen(received_hospitals(folder, results, 1), expected_layout(cfg), strategy)
    require_enough(hospitals, failures, int(strategy.min_hospitals), 1)
    weights = weigh(hospitals, strategy)
    logger.info("Merging %d received adapters with %s", len(hospitals), strategy.merge)
    versions = one_shot_versions(hospitals, weights, merge_hospitals(hospitals, weights, strategy), cfg)
    return versions, []


def _fedavg(folder: Path, results: dict[str, Any], cfg: DictConfig) -> tuple[list[ModelVersion], list[str]]:
    rounds = int(cfg.strategy.rounds)
    done = sorted({int(r) for r in results.get("train_metrics", {})})  # rounds that finished (all replies in)
    versions = []
    for server_round in done:
        hospitals = received_hospitals(folder, results, server_round)
        if len(hospitals) < int(cfg.strategy.min_hospitals):
            break
        state, rank = average_hospitals(hospitals)  # as the round itself averages (mixed ranks padded)
        scale = float(cfg.lora.alpha) / int(cfg.lora.r)
        versions.append(
            ModelVersion(
                f"fedavg-round-{server_round}",
                "fedavg",
                state,
                rank,
                scale * rank,
                {"round": server_round, "resumed": True},
            )
        )
    if not versions:
        raise ValueError(f"{folder}: no FedAvg round finished before the run stopped; nothing to resume from.")
    missing = (
        [f"rounds {len(versions) + 1}..{rounds} were not trained (resume never trains)"]
        if len(versions) < rounds
        else []
    )
    return versions, missing


def resume_run(folder: Path) -> Path:
    """Merge and evaluate what an interrupted or failed run received; say what could not be resumed."""
    folder = Path(folder).resolve()
    results = read_results(folder)
    if results is None or not (folder / "config.yaml").is_file():
        raise FileNotFoundError(f"{folder} is not a results folder (no {RESULTS_FILE} or config.yaml).")
    status, strategy = results.get("status"), results.get("strategy")
    if status == "completed":
        raise ValueError(f"{folder} completed; there is nothing to resume (scripts/remerge.py merges it other ways).")
    if strategy not in RESUMABLE:
        raise ValueError(
            f"{folder}: strategy={strategy!r} cannot be resumed (only {list(RESUMABLE)}): MedForge's progressive merges "
            "need the calibration sets, which are never stored; scripts/remerge.py merges its received adapters."
        )
    if not results.get("received"):
        raise ValueError(f"{folder} received no adapter before it stopped ({status}); run the experiment again.")
    cfg = OmegaConf.load(folder / "config.yaml")
    versions, not_resumed = (_one_shot if strategy == "one_shot" else _fedavg)(folder, results, cfg)
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
        status="completed",
        resumed={
            "from_status": status,
            "from_error": results.pop("error", None),
            "at": time.time(),
            "merged_from": "received/",
            "hospitals": delivered,
            "not_resumed": not_resumed,
        },
    )
    write_json_atomic(folder / RESULTS_FILE, results)
    return folder
