"""The main branch under MedForge-Fusion and MedForge-Mixture: one merge per arriving hospital.

Each arrival (a hospital's adapter plus its calibration set) makes a new version v1, v2, ...
The coefficients are searched on the calibration sets of the hospitals merged so far only.
`merge_all` is the one-shot variant: every hospital at once, one coefficient each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from fl_app.adapter_keys import lora_state
from fl_app.model.mixture import mixture_loss, mixture_scores
from fl_app.protocol import HospitalReply
from strategies.medforge.fusion import FusionForm, FusionLevel, coefficients_per_module, fuse, n_coefficients
from strategies.medforge.scoring import CalibrationScorer
from strategies.medforge.search import SearchResult, SearchSettings, search_coefficients
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


def search_record(result: SearchResult) -> dict[str, Any]:
    return {
        "objective": result.objective,
        "loss": result.loss,
        "start_objective": result.start_objective,
        "evaluations": result.evaluations,
    }


@dataclass
class FusionBranch:
    """MedForge-Fusion: main ← w0 · main + w1 · new, (w0, w1) searched on calibration sets."""

    scorer: CalibrationScorer
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
    ) -> tuple[dict[str, Tensor], int, list[float], SearchResult]:
        n = n_coefficients(len(adapters), len(adapters[0]), self.level)
        result = search_coefficients(self._loss(adapters, heads, hospital_ids, like), n, self.search)
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
            details |= {"coefficients": coefficients, "search": search_record(result)}
        self.main = split_lora_modules(state, 1.0)
        return progressive_version(f"fusion-v{step}", {**state, **heads}, rank, rank, hospital, self.merged, details)

    def merge_all(self, hospitals: Sequence[HospitalReply]) -> ModelVersion:
        """One-shot MedForge-Fusion: one coefficient per hospital (per module at level=layer)."""
        adapters = [split_lora_modules(lora_state(h.state), h.lora_scale) for h in hospitals]
        heads = task_heads(hospitals)
        state, rank, coefficients, result = self.fuse_searched(
            adapters, [h.hospital_id for h in hospitals], heads, like=hospitals[0].state
        )
        details = {
            "method": "medforge_fusion",
            "label": "medforge_fusion (one-shot)",
            "level": self.level,
            "form": self.form,
            "hospitals": [h.hospital_id for h in hospitals],
            "coefficients": coefficients,
            "search": search_record(result),
        }
        return ModelVersion("fusion-one-shot", "merged", {**state, **heads}, rank, rank, details)


@dataclass
class MixtureBranch:
    """MedForge-Mixture: p ∝ Σ c_j softmax(f_j); on arrival old c ← a · c, new c = b, (a, b) searched."""

    scorer: CalibrationScorer
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
            search = search_record(result) | {"a": a, "b": b}
        details = {"method": "medforge_mixture", "search": search, "coefficients": [self.coefficients[h] for h in on]}
        return progressive_version(
            f"mixture-v{step}",
            heads,
            int(self.scorer.lora["r"]),
            float(self.scorer.lora["alpha"]),
            hospital,
            self.merged,
            details,
            mixture=dict(self.coefficients),
        )

    def merge_all(self, hospitals: Sequence[HospitalReply]) -> ModelVersion:
        """One-shot MedForge-Mixture: one coefficient per hospital, searched on all calibration sets."""
        heads = task_heads(hospitals)
        on = [h.hospital_id for h in hospitals]
        probabilities = self._component_probabilities(hospitals, heads, on)
        result = search_coefficients(self._loss(probabilities, on, list), len(hospitals), self.search)
        mixture = dict(zip(on, result.coefficients))
        details = {
            "method": "medforge_mixture",
            "label": "medforge_mixture (one-shot)",
            "hospitals": on,
            "coefficients": result.coefficients,
            "search": search_record(result),
        }
        return ModelVersion(
            "mixture-one-shot",
            "merged",
            dict(heads),
            int(self.scorer.lora["r"]),
            float(self.scorer.lora["alpha"]),
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
