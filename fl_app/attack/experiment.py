"""Poisoning on real adapters: inject malicious hospitals into a finished run, merge as a run would
(screen, weigh, merge: `strategies.screening`), and measure how far the merge moves from the honest one.

Nothing of the run is changed: the stored hospital adapters are read (as remerge reads them), every
merged model is evaluated in this process at every hospital (as remerge evaluates), and the figures
are returned for the caller to write elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import OmegaConf

from fl_app.adapter_keys import lora_state
from fl_app.attack.attacks import honest_median_norms, make_attacker
from fl_app.attack.defences import defence_strategy
from fl_app.protocol import HospitalReply
from fl_app.remerge.evaluate import evaluate_at_hospitals
from fl_app.remerge.stored import StoredHospital, StoredRun
from fl_app.server.evaluation import evaluation_fields
from strategies.merging import split_lora_modules
from strategies.outcome import ModelVersion
from strategies.replies import NotEnoughHospitals
from strategies.screening import MergeRefused, expected_layout, screen_weigh_merge

logger = logging.getLogger("medforge.attack")


@dataclass(frozen=True)
class AttackCase:
    """One cell of the table: a merge method under a defence, with `attackers` of the hospitals attacking."""

    method: str
    defence: str
    attack: str | None  # None: no attack (the defence's cost on honest hospitals)
    factor: float = 1.0
    attackers: int = 0

    @property
    def name(self) -> str:
        what = "honest" if self.attack is None else f"{self.attack}-x{self.factor:g}-k{self.attackers}"
        return f"attack-{self.method}-{self.defence}-{what}"


@dataclass
class CaseOutcome:
    case: AttackCase
    merged: bool
    cosine: float | None = None  # of the merged ΔW (all modules) to the honest-only merge's
    norm_ratio: float | None = None  # ||merged ΔW|| / ||honest-only ΔW||
    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)  # hospital -> first reason
    honest_rejected: list[int] = field(default_factory=list)
    attacker_weight: float | None = None  # share of the merge weight the attackers got
    mean_acc: float | None = None
    mean_auc: float | None = None
    error: str | None = None

    def as_row(self) -> dict[str, Any]:
        c = self.case
        return {
            "method": c.method,
            "defence": c.defence,
            "attack": c.attack or "none",
            "factor": c.factor,
            "attackers": c.attackers,
            "merged": self.merged,
            "cosine": self.cosine,
            "norm_ratio": self.norm_ratio,
            "mean_acc": self.mean_acc,
            "mean_auc": self.mean_auc,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "honest_rejected": self.honest_rejected,
            "attacker_weight": self.attacker_weight,
            "error": self.error,
        }


def _reply(hospital: StoredHospital, state: dict[str, torch.Tensor], n_train: int) -> HospitalReply:
    return HospitalReply(
        node_id=hospital.id,
        hospital_id=hospital.id,
        task=hospital.task,
        n_train=n_train,
        n_val=0,
        n_test=0,
        data_source="stored",
        metrics={},
        state=state,
        lora_r=hospital.r,
        lora_alpha=hospital.alpha,
    )


def merged_delta(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """All LoRA modules' ΔW of a merged state (scale 1 after merging), flattened into one vector."""
    modules = split_lora_modules(lora_state(state), 1.0)
    return torch.cat([modules[m].delta().double().flatten() for m in sorted(modules)])


def _compare(merged: torch.Tensor, honest: torch.Tensor) -> tuple[float, float]:
    cosine = float(torch.nn.functional.cosine_similarity(merged, honest, dim=0))
    return cosine, float(merged.norm() / honest.norm()) if float(honest.norm()) > 0 else math.inf


def attack_cases(
    methods: Sequence[str],
    defences: Sequence[str],
    attacks: Sequence[str],
    factors: Sequence[float],
    attackers: Sequence[int],
) -> list[AttackCase]:
    """The grid: every method x defence without attack, then with every attack, factor and attacker count."""
    cases = [AttackCase(m, d, None) for m in methods for d in defences]
    cases += [
        AttackCase(m, d, a, f, k)
        for m in methods
        for d in defences
        for a in attacks
        for f in factors
        for k in attackers
    ]
    return cases


def run_attacks(run: StoredRun, cases: Sequence[AttackCase], num_hospitals: int, merge_rank: int | None, seed: int = 0):
    """Merge every case, evaluate all merged models in one pass per hospital; return the outcomes."""
    if num_hospitals > len(run.hospitals):
        raise ValueError(
            f"--hospitals {num_hospitals}: the run stored only {len(run.hospitals)} hospital adapters; "
            "choose at most that many"
        )
    chosen = run.hospitals[:num_hospitals]
    layout = expected_layout(run.experiment)
    base = {**OmegaConf.to_container(run.experiment.strategy, resolve=True), "merge_rank": merge_rank}
    honest_refs: dict[tuple[str, int], ModelVersion] = {}
    outcomes, versions = [], []
    for case in cases:
        n_bad = case.attackers if case.attack else 0
        if not 0 <= n_bad < num_hospitals:
            raise ValueError(
                f"{case.name}: {n_bad} attackers among {num_hospitals} hospitals; use 0 .. {num_hospitals - 1}"
            )
        honest, malicious = chosen[: num_hospitals - n_bad], chosen[num_hospitals - n_bad :]
        if (case.method, n_bad) not in honest_refs:  # the honest-only merge: the honest hospitals, no defence
            honest_refs[(case.method, n_bad)] = _honest_version(honest, case.method, n_bad, base)
        medians = honest_median_norms([h.state for h in honest], [h.scale for h in honest])
        replies = [_reply(h, h.state, h.n_train) for h in honest]
        for j, h in enumerate(malicious):
            source = malicious[0] if case.attack == "colluding_flip" else h  # colluders send one adapter
            bad = make_attacker(case.attack, source.state, source.scale, h.n_train, medians, case.factor, seed=seed + j)
            replies.append(_reply(h, bad.state, bad.n_train))
        strategy = defence_strategy(case.defence, case.method, base)
        outcome = CaseOutcome(case, merged=False)
        bad_ids = {h.id for h in malicious}

        def screened(accepted, failures, _actions, outcome=outcome, bad_ids=bad_ids) -> None:
            outcome.accepted = [h.hospital_id for h in accepted]
            for failure in failures:
                outcome.rejected.setdefault(failure.hospital_id, failure.problem or failure.error)
            outcome.honest_rejected = sorted(h for h in outcome.rejected if h not in bad_ids)

        try:
            merged = screen_weigh_merge(replies, strategy, layout, minimum=2, on_screened=screened)
        except NotEnoughHospitals:
            outcome.error = f"only {len(outcome.accepted)} adapter(s) passed the screen"
            outcomes.append(outcome)
            continue
        except MergeRefused as refused:  # amplified beyond its inputs: a run refuses it, nothing to evaluate
            outcome.error = f"merge refused: {refused}"
            outcomes.append(outcome)
            continue
        weights = merged.weights
        total = math.fsum(abs(w) for w in weights)
        outcome.attacker_weight = (
            math.fsum(abs(w) for h, w in zip(merged.hospitals, weights) if h.hospital_id in bad_ids) / total
        )
        reference = honest_refs[(case.method, n_bad)]
        outcome.cosine, outcome.norm_ratio = _compare(merged_delta(merged.result.state), merged_delta(reference.state))
        outcome.merged = True
        versions.append(merged.version(case.name, label=case.name))
        outcomes.append(outcome)
        logger.info(
            "%s: cosine %.3f, norm ratio %.3f, rejected %s",
            case.name,
            outcome.cosine,
            outcome.norm_ratio,
            outcome.rejected,
        )
    _evaluate(run, versions + list(honest_refs.values()), outcomes)
    return outcomes


def _honest_version(honest: Sequence[StoredHospital], method: str, n_bad: int, base: dict[str, Any]) -> ModelVersion:
    """The honest hospitals merged by `method` without any defence: the reference (`attack-<method>-honest-only-k<n>`)."""
    plain = defence_strategy("none", method, base)
    replies = [_reply(h, h.state, h.n_train) for h in honest]
    return screen_weigh_merge(replies, plain, layout=None).version(f"attack-{method}-honest-only-k{n_bad}")


def _digest(version: ModelVersion) -> str:
    """Identical merged states (e.g. an attacker rejected at every strength) are evaluated once."""
    digest = hashlib.sha1()
    for key in sorted(version.state):
        digest.update(key.encode())
        digest.update(version.state[key].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _evaluate(run: StoredRun, versions: list[ModelVersion], outcomes: list[CaseOutcome]) -> None:
    recorded = {int(h["id"]): h for h in run.results.get("hospitals", [])}
    unique: dict[str, ModelVersion] = {}
    alias = {}
    for version in versions:
        alias[version.name] = unique.setdefault(_digest(version), version).name
    logger.info("Evaluating %d distinct merged models (%d cases)", len(unique), len(versions))
    scores = evaluate_at_hospitals(run.experiment, list(unique.values()), run.evaluated_hospitals, recorded)
    metrics = {name: evaluation_fields(scores, alias[name]) for name in alias}
    for outcome in outcomes:
        found = metrics.get(outcome.case.name)
        if found:
            outcome.mean_acc, outcome.mean_auc = found["mean_acc"], found["mean_auc"]
    for name, found in metrics.items():
        if "honest-only" in name:
            method, n_bad = name.removeprefix("attack-").rsplit("-honest-only-k", 1)
            outcomes.append(
                CaseOutcome(
                    AttackCase(method, "honest-only", None, 1.0, int(n_bad)),
                    merged=True,
                    cosine=1.0,
                    norm_ratio=1.0,
                    mean_acc=found["mean_acc"],
                    mean_auc=found["mean_auc"],
                )
            )
