"""The leakage audit on real runs: membership inference on each hospital's released adapter, and the
closeness of calibration sets (distilled as a MedForge hospital would) to that hospital's patients."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_app.calibration import CalibrationSet, DistillSettings
from fl_app.config import hospital_payload
from fl_app.data import SplitArrays
from fl_app.hospital_steps import Hospital, simulated_hospital
from fl_app.privacy.audit import closeness, membership_auc, nearest_distances
from fl_app.privacy.ledger import Ledger
from fl_app.privacy.settings import PrivacySettings
from fl_app.remerge.stored import load_stored_run
from fl_app.training import to_pixels, unit_images


@torch.no_grad()
def per_sample_losses(hospital: Hospital, split: SplitArrays) -> np.ndarray:
    """Each image's loss under the hospital's active adapter (no class weights: the attacker's view)."""
    model, task = hospital.model.peft, hospital.data.task
    model.eval()
    losses = []
    for start in range(0, len(split), 256):
        pixels = to_pixels(split.images[start : start + 256], hospital.image_size).to(hospital.device)
        logits = model(pixel_values=pixels, task=task.name).float().cpu()
        labels = torch.from_numpy(split.labels[start : start + 256])
        if task.multi_label:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(1)
        else:
            loss = nn.functional.cross_entropy(logits, labels[:, 0].long(), reduction="none")
        losses.append(loss)
    return torch.cat(losses).numpy()


def run_epsilon(results: Mapping[str, Any]) -> float:
    """The run's largest reported ε (∞ when it was not private)."""
    privacy = results.get("privacy") or {}
    return float(privacy["max_epsilon"]) if privacy.get("max_epsilon") is not None else float("inf")


def membership_rows(folder: Path) -> list[dict[str, Any]]:
    """Loss-threshold MIA AUC of every hospital's released adapter. Members: its training split.
    Non-members: its validation split (drawn like the training split; without DP it only picked the
    epoch), and its test split (for PneumoniaMNIST from another source: a shift inflates that AUC)."""
    run = load_stored_run(folder)
    payload = json.loads(hospital_payload(run.experiment))
    num_hospitals = int(run.experiment.simulation.num_hospitals)
    rows = []
    for stored in run.hospitals:
        hospital = simulated_hospital(payload, stored.id, num_hospitals)
        name = hospital.model.use_adapter(payload["lora"], rank=stored.r, alpha=stored.alpha)
        hospital.model.load_adapter_state(name, stored.state, stored.task)
        hospital.model.peft.to(hospital.device)
        members = per_sample_losses(hospital, hospital.data.train)
        validation, test = (
            per_sample_losses(hospital, hospital.data.val),
            per_sample_losses(hospital, hospital.data.test),
        )
        rows.append(
            {
                "run": str(folder),
                "strategy": run.results.get("strategy"),
                "seed": run.results.get("seed"),
                "epsilon": run_epsilon(run.results),
                "hospital": stored.id,
                "task": stored.task,
                "members": len(members),
                "member_loss": float(np.mean(members)),
                "val_loss": float(np.mean(validation)),
                "test_loss": float(np.mean(test)),
                "mia_auc_val": membership_auc(members, validation, seed=stored.id),
                "mia_auc_test": membership_auc(members, test, seed=stored.id),
            }
        )
    return rows


@dataclass(frozen=True)
class Variant:
    """One way a hospital could make its calibration set."""

    name: str
    settings: DistillSettings
    privacy: PrivacySettings | None


@dataclass
class CalibrationAudit:
    rows: list[dict[str, Any]]
    examples: dict[tuple[int, str], tuple[CalibrationSet, np.ndarray]]  # (hospital, variant) -> set, train images


def calibration_audit(experiment_folder: Path, variants: list[Variant], max_reference: int = 2000) -> CalibrationAudit:
    """Distil each hospital's set per variant (Hospital.calibration_set, as a MedForge hospital does)
    and measure each image's nearest training patient in pixels and in frozen-backbone embeddings."""
    run = load_stored_run(experiment_folder)
    payload = json.loads(hospital_payload(run.experiment))
    num_hospitals = int(run.experiment.simulation.num_hospitals)
    rows, examples = [], {}
    for stored in run.hospitals:
        hospital = simulated_hospital(payload, stored.id, num_hospitals)
        hospital.model.use_adapter(payload["lora"])
        hospital.model.peft.to(hospital.device)
        train, test = hospital.data.train, hospital.data.test
        train_unit, test_unit = unit_images(train.images[:max_reference]), unit_images(test.images[:max_reference])
        with hospital.model.peft.disable_adapter(), torch.no_grad():
            train_embedded = _embed_all(hospital, train_unit)
            test_embedded = _embed_all(hospital, test_unit)
        baseline = {
            "pixels": nearest_distances(test_unit, train_unit),
            "embedding": nearest_distances(test_embedded, train_embedded),
        }
        for variant in variants:
            calibration = hospital.calibration_set(variant.settings, variant.privacy, Ledger())
            released = unit_images(calibration.images)
            with hospital.model.peft.disable_adapter(), torch.no_grad():
                released_embedded = _embed_all(hospital, released)
            measures = {
                "pixels": closeness(nearest_distances(released, train_unit), baseline["pixels"]),
                "embedding": closeness(nearest_distances(released_embedded, train_embedded), baseline["embedding"]),
            }
            rows.append(
                {
                    "hospital": stored.id,
                    "task": stored.task,
                    "variant": variant.name,
                    "epsilon": calibration.epsilon,
                    "images": len(released),
                    **{f"{space}_{k}": v for space, c in measures.items() for k, v in c.as_dict().items()},
                }
            )
            examples[(stored.id, variant.name)] = (calibration, train.images[:max_reference])
    return CalibrationAudit(rows, examples)


def _embed_all(hospital: Hospital, unit: torch.Tensor) -> torch.Tensor:
    return torch.cat([hospital.frozen_embedding(unit[s : s + 256]) for s in range(0, len(unit), 256)])
