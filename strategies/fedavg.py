"""The baseline: Flower's FedAvg over the adapter tensors for R rounds.

Multi-task runs have one head per task, so replies do not share every key; each tensor is then
averaged over the hospitals that sent it. With identical keys this is exactly Flower's FedAvg.

Hospitals of different capacity (LoRA ranks r_i): the factors are zero-padded to the largest rank
and averaged, and each hospital takes the first r_i directions of the global adapter back: the
zero-padding scheme of HetLoRA (Cho et al. 2024, "Heterogeneous LoRA for Federated Fine-tuning of
On-Device Foundation Models", https://arxiv.org/abs/2401.06432), without its rank self-pruning or
sparsity-weighted aggregation. It needs one scale alpha / r at every hospital.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from omegaconf import DictConfig

from fl_app.adapter_keys import LORA_B_SUFFIX
from fl_app.model.adapter import arrayrecord_to_state, fit_rank, state_to_arrayrecord
from fl_app.protocol import HospitalReply, instructions
from strategies.outcome import ModelVersion, StrategyOutcome
from strategies.replies import (
    EvaluateAfterTraining,
    RoundSink,
    collect_replies,
    require_enough,
    train_timeout,
)
from strategies.screening import expected_layout, refuse_amplified, screen_settings, screen_with_parties
from strategies.spec import StrategySpec


def keywise_average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of each tensor over the states that contain it."""
    keys = sorted({k for state in states for k in state})
    averaged = {}
    for key in keys:
        pairs = [(state[key], w) for state, w in zip(states, weights) if key in state]
        total = sum(w for _, w in pairs)
        averaged[key] = sum(t.double() * (w / total) for t, w in pairs).to(pairs[0][0].dtype)
    return averaged


def average_hospitals(hospitals: list[HospitalReply]) -> tuple[dict[str, torch.Tensor], int]:
    """FedAvg of the hospitals' adapters by `n_train`, and its rank: mixed ranks are zero-padded to the
    largest first (HetLoRA), which leaves equal ranks unchanged. The one average a round, a resumed
    round and the benchmark floor share."""
    rank = max(h.lora_r for h in hospitals)
    states = [fit_rank(h.state, rank) for h in hospitals]
    return keywise_average(states, [h.n_train for h in hospitals]), rank


class AdapterFedAvg(EvaluateAfterTraining, FedAvg):
    """FedAvg (weighted by `num-examples`) that keeps every round's global adapter."""

    def __init__(self, cfg: DictConfig, sink: RoundSink) -> None:
        min_hospitals = int(cfg.strategy.min_hospitals)
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,  # see EvaluateAfterTraining
            min_train_nodes=min_hospitals,
            min_available_nodes=min_hospitals,
        )
        self.cfg = cfg
        self.min_hospitals = min_hospitals
        self.sink = sink
        self.round_states: list[dict[str, torch.Tensor]] = []
        self.round_ranks: list[int] = []
        self.screening: list[dict[str, Any]] = []  # every round's screen actions, with the round
        self._layout = None

    def layout(self):
        """The adapter the hospitals must send (built once, as a one-shot merge builds it)."""
        if self._layout is None:
            self._layout = expected_layout(self.cfg)
        return self._layout

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        delivered, failures = collect_replies(replies, server_round, self.sink.bound_nodes())
        # every round is screened like a one-shot merge: rejected hospitals are failures of the round
        hospitals, rejections, actions, _ = screen_with_parties(
            delivered, self.layout(), self.cfg.strategy, server_round
        )
        self.screening += [{"round": server_round, **a.as_dict()} for a in actions]
        failures = failures + rejections
        self.sink.record_round(server_round, delivered, failures)
        require_enough(hospitals, failures, self.min_hospitals, server_round)
        ranks = {h.lora_r for h in hospitals}
        changed = any(a.action in ("clipped", "dropped") for a in actions)
        if len(ranks) == 1 and len({frozenset(h.state) for h in hospitals}) == 1 and not changed:
            accepted = {h.node_id for h in hospitals}
            good = [m for m in replies if not m.has_error() and m.metadata.src_node_id in accepted]
            arrays, metrics = super().aggregate_train(server_round, good)
            rank = ranks.pop()
        else:  # mixed ranks (HetLoRA padding), mixed key sets (each key over the hospitals that send it), or screened states
            state, rank = average_hospitals(hospitals)
            arrays = state_to_arrayrecord(state)
            metrics = MetricRecord(
                {"hospitals": len(hospitals), **({"ranks": sorted(ranks)} if len(ranks) > 1 else {})}
            )
        averaged = arrayrecord_to_state(arrays)
        total = sum(h.n_train for h in hospitals)
        refuse_amplified(
            _scaled(averaged, rank, self.cfg), hospitals, [h.n_train / total for h in hospitals], self.cfg.strategy
        )
        self.round_states.append(averaged)
        self.round_ranks.append(rank)
        return arrays, metrics


def run_fedavg(grid: Any, cfg: DictConfig, experiment_json: str, sink: RoundSink) -> StrategyOutcome:
    """R rounds of FedAvg; versions: the global adapter after each round."""
    strategy = AdapterFedAvg(cfg, sink=sink)
    rounds = int(cfg.strategy.rounds)
    strategy.start(
        grid,
        ArrayRecord(),
        num_rounds=rounds,
        timeout=train_timeout(cfg.strategy),
        train_config=instructions(experiment_json),
    )
    versions = [
        fedavg_version(cfg, i, state, rank)
        for i, (state, rank) in enumerate(zip(strategy.round_states, strategy.round_ranks), start=1)
    ]
    return StrategyOutcome(versions=versions, details={"rounds": rounds, "screening": strategy.screening})


def _scaled(state: dict[str, torch.Tensor], rank: int, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """The global adapter with its scale alpha / r folded into B, as a merge returns it (scale 1)."""
    scale = float(cfg.lora.alpha) / int(cfg.lora.r)
    return {k: (t * scale if k.endswith(LORA_B_SUFFIX) else t) for k, t in state.items()}


def fedavg_version(
    cfg: DictConfig, server_round: int, state: dict[str, torch.Tensor], rank: int, **details: Any
) -> ModelVersion:
    """The global adapter after `server_round`, as every FedAvg version is built (a run, resume, the floor).

    A global adapter of rank r keeps the hospitals' scale alpha / r (one scale: see the module docstring),
    so mixed ranks padded to the largest keep theirs."""
    scale = float(cfg.lora.alpha) / int(cfg.lora.r)
    return ModelVersion(
        f"fedavg-round-{server_round}", "fedavg", state, rank, scale * rank, {"round": server_round, **details}
    )


def round_versions(cfg: DictConfig, server_round: int, hospitals: Sequence[HospitalReply]) -> list[ModelVersion]:
    """The global adapter a round of these hospitals' adapters makes (resume, the benchmark floor)."""
    state, rank = average_hospitals(list(hospitals))  # as the round itself averages (mixed ranks padded)
    return [fedavg_version(cfg, server_round, state, rank)]


def validate_fedavg(cfg: DictConfig) -> None:
    """Mixed ranks are zero-padded (HetLoRA), which needs one scale alpha / r at every hospital; the
    round screen's bounds are valid."""
    screen_settings(cfg.strategy)
    ranks, alphas = list(cfg.simulation.get("lora_r") or []), list(cfg.simulation.get("lora_alpha") or [])
    if len(set(ranks)) > 1 and alphas:
        scales = {float(a) / r for a, r in zip(alphas, ranks)}
        if len(scales) != 1:
            raise ValueError(
                f"FedAvg over mixed ranks zero-pads the factors (HetLoRA), which needs one scale alpha / r; "
                f"simulation.lora_alpha={alphas} with lora_r={ranks} gives {sorted(scales)}: leave lora_alpha null."
            )


SPEC = StrategySpec(
    name="fedavg",
    runner=run_fedavg,
    rounds=True,
    one_round=False,
    validate=validate_fedavg,
    round_versions=round_versions,
)
