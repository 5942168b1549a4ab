"""Which versions each hospital evaluates: O(N) by default, the full cross matrix on request.

By default every global version (merged, progressive, FedAvg rounds, references) goes to every
hospital, and each hospital's own adapter only to that hospital: the "local" reference the report
reads is its own adapter on its own test split, so nothing the report shows needs the other
N-1 cells. Traffic, server memory and evaluation time then grow linearly in N instead of N².
`strategy.cross_evaluation=true` sends every version everywhere, as before.

A mixture version (MedForge-Mixture) is scored by running its components, so a hospital that
scores a mixture also receives the components it names; their own scores there are dropped
(`keep_planned`), so a hospital adapter's figures mean the same with or without mixtures.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from strategies.outcome import ModelVersion

if TYPE_CHECKING:
    from fl_app.server.evaluation import HospitalScores

OWN_KINDS = ("hospital",)  # versions that are one hospital's own adapter (`details["hospital"]` names it)


def cross_evaluation(strategy) -> bool:
    """`strategy.cross_evaluation`: every hospital adapter at every hospital (default false: O(N))."""
    return bool(strategy.get("cross_evaluation", False))


def is_own(version: ModelVersion, hospital_id: int | None) -> bool:
    """Whether `version` is hospital `hospital_id`'s own adapter."""
    return hospital_id is not None and version.details.get("hospital") == hospital_id


def scored_versions(versions: Sequence[ModelVersion], hospital_id: int | None, cross: bool) -> list[str]:
    """Names of the versions hospital `hospital_id` scores (None: a node not known to be a hospital)."""
    return [v.name for v in versions if cross or v.kind not in OWN_KINDS or is_own(v, hospital_id)]


def versions_for_hospital(versions: Sequence[ModelVersion], hospital_id: int | None, cross: bool) -> list[ModelVersion]:
    """The versions hospital `hospital_id`'s message carries: those it scores plus the mixtures' components."""
    scored = set(scored_versions(versions, hospital_id, cross))
    needed = scored | {name for v in versions if v.name in scored and v.mixture for name in v.mixture}
    return [v for v in versions if v.name in needed]


def keep_planned(score: HospitalScores, scored: Collection[str]) -> HospitalScores:
    """A hospital's scores restricted to the versions it was meant to score (metric keys `<version>/<metric>`)."""
    kept = {k: v for k, v in score.metrics.items() if "/" not in k or k.rpartition("/")[0] in scored}
    return replace(score, metrics=kept)
