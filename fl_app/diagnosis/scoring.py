"""A stored run's hospitals in this process: candidate merges scored on their validation (or test) splits.

The same numbers the federated search gets from the sites (clipped cross-entropy, pooled per task by
validation size, then averaged over tasks) plus AUC, without Flower: the diagnosis and the choice of
a MedForge variant run here, on validation only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from fl_app.candidate_scoring import clipped_losses
from fl_app.config import hospital_payload
from fl_app.hospital_steps import Hospital, simulated_hospital
from fl_app.model.mixture import mixture_probabilities
from fl_app.remerge.stored import StoredHospital
from fl_app.training import medmnist_metrics

SPLITS = ("val", "test")


@dataclass(frozen=True)
class Score:
    loss: float  # per task the pooled mean clipped cross-entropy, then the mean over tasks
    auc: float  # mean over tasks of the pooled AUC
    acc: float
    per_task: dict[str, dict[str, float]]


class InProcessScorer:
    """Each hospital of a stored run, its data and model built here, scoring candidate adapters."""

    def __init__(self, experiment: DictConfig, hospitals: Sequence[StoredHospital], loss_clip: float = 5.0) -> None:
        payload = json.loads(hospital_payload(experiment))
        n = int(experiment.simulation.num_hospitals)
        self.stored = list(hospitals)
        self.sites: list[Hospital] = [simulated_hospital(payload, h.id, n) for h in hospitals]
        for site in self.sites:  # PEFT wraps the backbone on first use (distillation switches LoRA off through it)
            site.model.use_adapter(site.lora)
        self.loss_clip = loss_clip
        self.evaluations = 0

    def split(self, site: Hospital, name: str):
        if name not in SPLITS:
            raise ValueError(f"split {name!r}: choose one of {SPLITS}")
        return site.data.val if name == "val" else site.data.test

    def probabilities(
        self, state: Mapping[str, torch.Tensor], rank: int, alpha: float, split: str
    ) -> list[torch.Tensor]:
        """Every hospital's class probabilities under one adapter (LoRA + heads of every task)."""
        return [site._split_probabilities(self.split(site, split), dict(state), rank, alpha) for site in self.sites]

    def own_probabilities(self, split: str, heads: Mapping[str, torch.Tensor]) -> list[list[torch.Tensor]]:
        """[component][hospital] probabilities of each hospital's own LoRA with `heads`: a Mixture's parts."""
        return [
            self.probabilities({**{k: v for k, v in h.state.items() if "lora_" in k}, **heads}, h.r, h.alpha, split)
            for h in self.stored
        ]

    def score(self, probabilities: Sequence[torch.Tensor], split: str) -> Score:
        """Pool each task's hospitals (loss by size, AUC and ACC on the union) and average over tasks."""
        self.evaluations += 1
        per_task: dict[str, dict[str, list]] = {}
        for site, p in zip(self.sites, probabilities):
            labels = self.split(site, split).labels
            entry = per_task.setdefault(site.task, {"p": [], "y": [], "loss": []})
            entry["p"].append(p.numpy())
            entry["y"].append(labels)
            entry["loss"].append(clipped_losses(p, labels, self.loss_clip).numpy())
        rows = {}
        for task, entry in per_task.items():
            site = next(s for s in self.sites if s.task == task)
            metrics = medmnist_metrics(site.data.task, np.concatenate(entry["y"]), np.concatenate(entry["p"]))
            rows[task] = {"loss": float(np.concatenate(entry["loss"]).mean()), **metrics}
        return Score(
            float(np.mean([r["loss"] for r in rows.values()])),
            float(np.mean([r["auc"] for r in rows.values()])),
            float(np.mean([r["acc"] for r in rows.values()])),
            rows,
        )

    def mixture_score(
        self, components: Sequence[Sequence[torch.Tensor]], coefficients: Sequence[float], split: str
    ) -> Score:
        per_hospital = [
            mixture_probabilities([c[i] for c in components], list(coefficients)) for i in range(len(self.sites))
        ]
        return self.score(per_hospital, split)
