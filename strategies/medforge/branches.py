"""The main branch under MedForge-Fusion and MedForge-Mixture: one merge per arriving hospital.

Each arrival (a hospital's adapter plus its calibration set) makes a new version v1, v2, ...
The coefficients are searched on the calibration sets of the hospitals merged so far only.
`merge_all` is the one-shot variant: every hospital at once, one coefficient each.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from fl_app.adapter_keys import lora_state
from fl_app.model.mixture import mixture_loss, mixture_scores
from fl_app.protocol import HospitalReply
from strategies.medforge.federated import FederatedSearch
from strategies.medforge.fusion import FusionForm, FusionLevel, coefficients_per_module, fuse, n_coefficients
from strategies.medforge.scoring import CalibrationScorer
from strategies.medforge.search import BatchLoss, SearchResult, SearchSettings, search_coefficients
from strategies.merging import LoraFactors, average_tensors, split_heads, split_lora_modules
from strategies.outcome import ModelVersion


def task_heads(hospitals: Sequence[HospitalReply]) -> dict[str, Tensor]:
    """Each task's head: the mean of the heads of the hospitals on that task (one per task in multi_task)."""
    per_task: dict[str, list[dict[str, Tensor]]] = {}
    for h in hospitals:
        per_task.setdefault(h.task, []).append(split_heads(h.state)[h.task])
    return {
        key: average_tensors([heads[key] for heads in group], [1.0] * len(group))
        for group in per_task.values()
        for key in group[0]
    }


def search_record(result: SearchResult, settings: SearchSettings, seconds: float | None = None) -> dict[str, Any]:
    """The search as results.json keeps it, every point it evaluated included (the diagnosis reads them)."""
    return {
        "source": settings.source,
        "geometry": settings.geometry,
        "start": result.start,
        "l1": settings.l1,
        "l1_from": settings.l1_from,
        "objective": result.objective,
        "loss": result.loss,
        "start_objective": result.start_objective,
        "evaluations": result.evaluations,
        "seconds": seconds,
        "trace": [{"coefficients": list(w), "loss": loss} for w, loss in result.trace],
    }


@dataclass
class FusionBranch:
    """MedForge-Fusion: main ← w0 · main + w1 · new, (w0, w1) searched on calibration sets."""

    scorer: CalibrationScorer | None
    search: SearchSettings
    level: FusionLevel = "whole"
    form: FusionForm = "delta"
    main: dict[str, LoraFactors] | None = None
    merged: list[HospitalReply] = field(default_factory=list)

    def _loss(
        self,
        adapters: Sequence[Mapping[str, LoraFactors]],
        heads: Mapping[str, Tensor],
        hospital_ids: Sequence[int],
        like: Mapping[str, Tensor],
    ):
        modules = list(adapters[0])

        def loss(flat: np.ndarray) -> float:
            state, rank = fuse(
                adapters,
                coefficients_per_module(flat, modules, len(adapters), self.level),
                self.form,
                compact=False,
                like=like,
            )
            return self.scorer.cross_entropy(self.scorer.logits({**state, **heads}, rank, rank, hospital_ids))

        return loss

    def fuse_searched(
        self,
        adapters: Sequence[Mapping[str, LoraFactors]],
        hospital_ids: Sequence[int],
        heads: Mapping[str, Tensor],
        like: Mapping[str, Tensor],
        start: Sequence[float] | None = None,
        batch_loss: BatchLoss | None = None,
        batch: int = 1,
    ) -> tuple[dict[str, Tensor], int, list[float], SearchResult]:
        n = n_coefficients(len(adapters), len(adapters[0]), self.level)
        if batch_loss is None:
            result = search_coefficients(self._loss(adapters, heads, hospital_ids, like), n, self.search, start)
        else:
            result = search_coefficients(None, n, self.search, start, batch_loss=batch_loss, batch=batch)
        modules = list(adapters[0])
        state, rank = fuse(
            adapters,
            coefficients_per_module(result.coefficients, modules, len(adapters), self.level),
            self.form,
            like=like,
        )
        return state, rank, result.coefficients, result

    def arrive(self, hospital: HospitalReply, step: int) -> ModelVersion:
        """Merge one more hospital into the main branch; the new version."""
        self.merged.append(hospital)
        heads = task_heads(self.merged)
        new = split_lora_modules(lora_state(hospital.state), hospital.lora_scale)
        details: dict[str, Any] = {"method": "medforge_fusion", "level": self.level, "form": self.form}
        if self.main is None:  # the first arrival is the main branch
            state, rank = fuse([new], [{m: 1.0 for m in new}], self.form, like=hospital.state)
            details |= {"coefficients": [1.0], "search": None}
        else:
            state, rank, coefficients, result = self.fuse_searched(
                [self.main, new], [h.hospital_id for h in self.merged], heads, like=hospital.state
            )
            details |= {"coefficients": coefficients, "search": search_record(result, self.search)}
        self.main = split_lora_modules(state, 1.0)
        return progressive_version(f"fusion-v{step}", {**state, **heads}, rank, rank, hospital, self.merged, details)

    def merge_all(
        self,
        hospitals: Sequence[HospitalReply],
        start: Sequence[float] | None = None,
        federated: FederatedSearch | None = None,
    ) -> ModelVersion:
        """One-shot MedForge-Fusion: one coefficient per hospital (per module at level=layer), searched
        on the calibration sets or, with `federated`, on the hospitals' validation splits."""
        started = time.perf_counter()
        adapters = [split_lora_modules(lora_state(h.state), h.lora_scale) for h in hospitals]
        heads = task_heads(hospitals)
        state, rank, coefficients, result = self.fuse_searched(
            adapters,
            [h.hospital_id for h in hospitals],
            heads,
            like=hospitals[0].state,
            start=start,
            batch_loss=None if federated is None else federated.batch_loss("fusion", hospitals),
            batch=1 if federated is None else federated.settings.candidates_per_round,
        )
        details = {
            "method": "medforge_fusion",
            "label": "medforge_fusion (one-shot)",
            "level": self.level,
            "form": self.form,
            "hospitals": [h.hospital_id for h in hospitals],
            "coefficients": coefficients,
            "search": search_record(result, self.search, time.perf_counter() - started),
        }
        return ModelVersion("fusion-one-shot", "merged", {**state, **heads}, rank, rank, details)


@dataclass
class MixtureBranch:
    """MedForge-Mixture: p ∝ Σ c_j softmax(f_j); on arrival old c ← a · c, new c = b, (a, b) searched."""

    scorer: CalibrationScorer | None
    search: SearchSettings
    coefficients: dict[int, float] = field(default_factory=dict)
    merged: list[HospitalReply] = field(default_factory=list)

    def _component_probabilities(
        self, hospitals: Sequence[HospitalReply], heads: Mapping[str, Tensor], on: Sequence[int]
    ) -> list[dict[int, Tensor]]:
        """softmax(f_j) of each component on each listed calibration set: one forward pass per adapter."""
        return [
            self.scorer.probabilities({**lora_state(h.state), **heads}, h.lora_r, h.lora_alpha, on) for h in hospitals
        ]

    def _loss(self, probabilities: list[dict[int, Tensor]], on: Sequence[int], combine):
        def loss(flat: np.ndarray) -> float:
            coefficients = combine(flat)
            return float(
                np.mean(
                    [
                        mixture_loss(mixture_scores([p[h] for p in probabilities], coefficients), self.scorer.labels(h))
                        for h in on
                    ]
                )
            )

        return loss

    def arrive(self, hospital: HospitalReply, step: int) -> ModelVersion:
        self.merged.append(hospital)
        heads = task_heads(self.merged)
        on = [h.hospital_id for h in self.merged]
        if not self.coefficients:
            self.coefficients[hospital.hospital_id] = 1.0
            search = None
        else:
            old = [self.coefficients[h.hospital_id] for h in self.merged[:-1]]
            probabilities = self._component_probabilities(self.merged, heads, on)
            result = search_coefficients(
                self._loss(probabilities, on, lambda ab: [ab[0] * c for c in old] + [ab[1]]), 2, self.search
            )
            a, b = result.coefficients
            self.coefficients = {h.hospital_id: a * c for h, c in zip(self.merged[:-1], old)} | {
                hospital.hospital_id: b
            }
            search = search_record(result, self.search) | {"a": a, "b": b}
        details = {"method": "medforge_mixture", "search": search, "coefficients": [self.coefficients[h] for h in on]}
        return progressive_version(
            f"mixture-v{step}",
            heads,
            hospital.lora_r,
            hospital.lora_alpha,
            hospital,
            self.merged,
            details,
            mixture=dict(self.coefficients),
        )

    def merge_all(
        self,
        hospitals: Sequence[HospitalReply],
        start: Sequence[float] | None = None,
        federated: FederatedSearch | None = None,
    ) -> ModelVersion:
        """One-shot MedForge-Mixture: one coefficient per hospital, searched on all calibration sets
        or, with `federated`, on the hospitals' validation splits."""
        started = time.perf_counter()
        heads = task_heads(hospitals)
        on = [h.hospital_id for h in hospitals]
        if federated is None:
            probabilities = self._component_probabilities(hospitals, heads, on)
            result = search_coefficients(self._loss(probabilities, on, list), len(hospitals), self.search, start)
        else:
            result = search_coefficients(
                None,
                len(hospitals),
                self.search,
                start,
                batch_loss=federated.batch_loss("mixture", hospitals),
                batch=federated.settings.candidates_per_round,
            )
        mixture = dict(zip(on, result.coefficients))
        details = {
            "method": "medforge_mixture",
            "label": "medforge_mixture (one-shot)",
            "hospitals": on,
            "coefficients": result.coefficients,
            "search": search_record(result, self.search, time.perf_counter() - started),
        }
        return ModelVersion(
            "mixture-one-shot",
            "merged",
            dict(heads),
            hospitals[0].lora_r,
            hospitals[0].lora_alpha,
            details,
            mixture=_component_names(mixture),
        )


def _component_names(coefficients: Mapping[int, float]) -> dict[str, float]:
    """Mixture components are the hospitals' own versions (`hospital-<id>`)."""
    return {f"hospital-{h}": c for h, c in coefficients.items()}


def progressive_version(
    name: str,
    state: dict[str, Tensor],
    rank: int,
    alpha: float,
    hospital: HospitalReply,
    merged: Sequence[HospitalReply],
    details: dict[str, Any],
    mixture: Mapping[int, float] | None = None,
) -> ModelVersion:
    """A main-branch version with its provenance: who arrived, what is merged so far."""
    provenance = {
        "step": len(merged),
        "hospital": hospital.hospital_id,
        "task": hospital.task,
        "hospitals_merged": [h.hospital_id for h in merged],
        "tasks_merged": sorted({h.task for h in merged}),
    }
    return ModelVersion(
        name,
        "progressive",
        state,
        rank,
        alpha,
        provenance | details,
        mixture=None if mixture is None else _component_names(mixture),
    )
