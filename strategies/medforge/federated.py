"""MedForge's federated search, the server's side: candidates go to the hospitals, losses come back.

Each batch of candidate coefficients is one message round (`evaluate.search`) to every hospital
merged; each hospital scores every candidate on its own validation split (fl_app.candidate_scoring)
and returns one number per candidate. The objective pools them as the calibration search does:
per task the validation-size-weighted mean (the loss on the task's pooled validation images), then
the mean over tasks (each task counts once). Every message is counted in the run's traffic
(phase `evaluate.search`). A hospital that fails a round is left out of the rest of the search and
recorded; the search fails only when no hospital answers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common import log
from torch import Tensor

from fl_app.adapter_keys import head_state, lora_state
from fl_app.candidate_scoring import (
    CANDIDATE_PREFIX,
    HEADS,
    MESSAGE_TYPE,
    PEER_PREFIX,
    SHARES,
    Kind,
    SearchRequest,
    Share,
    decode_losses,
    fused_candidate,
    search_content,
)
from fl_app.failures import Failure
from fl_app.model.adapter import state_to_arrayrecord
from fl_app.protocol import HospitalReply, instructions, reply_failure
from strategies.medforge.search import BatchLoss


@dataclass(frozen=True)
class FederatedSettings:
    """`strategy.federated`: how candidates travel and what comes back."""

    share: Share | None = None  # merged | adapters: a choice the run must make (each exposes something else)
    candidates_per_round: int = 8  # candidates scored per message round
    loss_clip: float = 5.0  # each image's loss is clipped here (bounds one patient's influence)
    dp_noise: float = 0.0  # z: Gaussian noise of std z · loss_clip / n on each returned loss (0: none)
    max_val: int | None = None  # score on at most this many validation images per hospital (a seeded subset)
    timeout_s: float = 600.0  # a search round waits this long for the hospitals

    def __post_init__(self) -> None:
        if self.share not in SHARES:
            raise ValueError(
                f"strategy.federated.share={self.share!r}: choose what the hospitals see, one of {SHARES}. "
                "merged: each candidate's fused adapter goes to every site (bytes grow with candidates); "
                "adapters: every hospital's adapter goes to every site once, then only coefficients "
                "(each site sees the others' adapters; docs/privacy.md)."
            )
        if self.candidates_per_round < 1:
            raise ValueError(f"strategy.federated.candidates_per_round={self.candidates_per_round} must be >= 1.")
        if not self.loss_clip > 0:
            raise ValueError(f"strategy.federated.loss_clip={self.loss_clip} must be > 0.")
        if self.dp_noise < 0:
            raise ValueError(f"strategy.federated.dp_noise={self.dp_noise} must be >= 0 (0: no noise).")
        if self.max_val is not None and self.max_val < 1:
            raise ValueError(f"strategy.federated.max_val={self.max_val} must be >= 1 or null (all).")
        if not self.timeout_s > 0:
            raise ValueError(f"strategy.federated.timeout_s={self.timeout_s} must be > 0.")


def pooled_loss(losses: Mapping[int, float], sizes: Mapping[int, int], tasks: Mapping[int, str]) -> float:
    """Per task the size-weighted mean of its hospitals' losses, then the mean over tasks."""
    per_task: dict[str, list[tuple[float, int]]] = {}
    for hospital, loss in losses.items():
        per_task.setdefault(tasks[hospital], []).append((loss, sizes[hospital]))
    means = [sum(v * n for v, n in group) / sum(n for _, n in group) for group in per_task.values()]
    return float(np.mean(means))


class FederatedSearch:
    """Scores candidate merges at the hospitals (one message round per batch)."""

    def __init__(
        self,
        grid: Any,
        hospitals: Sequence[HospitalReply],
        experiment_json: str,
        settings: FederatedSettings,
        heads: Mapping[str, Tensor],
        seed: int,
    ) -> None:
        self.grid, self.settings, self.seed = grid, settings, seed
        self.experiment_json = experiment_json
        self.hospitals = [h for h in hospitals if h.n_val > 0]
        self.heads = dict(heads)
        self.failures: list[Failure] = []
        self.rounds = 0
        self.seconds = 0.0
        self.sent_adapters = False
        if not self.hospitals:
            raise ValueError("the federated search needs hospitals with validation images; none reports any (n_val).")

    @property
    def sizes(self) -> dict[int, int]:
        cap = self.settings.max_val
        return {h.hospital_id: h.n_val if cap is None else min(h.n_val, cap) for h in self.hospitals}

    def batch_loss(self, kind: Kind, adapters: Sequence[HospitalReply]) -> BatchLoss:
        """The search's loss over coefficient vectors (one per adapter in `adapters`), scored at the hospitals."""

        def losses(ws: list[np.ndarray]) -> list[float]:
            return self._score(kind, adapters, [[float(x) for x in w] for w in ws])

        return losses

    def _score(self, kind: Kind, adapters: Sequence[HospitalReply], coefficients: list[list[float]]) -> list[float]:
        started = time.perf_counter()
        self.rounds += 1
        messages = {h.node_id: self._message(h, kind, adapters, coefficients) for h in self.hospitals}
        self.sent_adapters = self.sent_adapters or self.settings.share == "adapters"
        replies = self.grid.send_and_receive(list(messages.values()), timeout=self.settings.timeout_s)
        per_hospital: dict[int, list[float]] = {}
        by_node = {h.node_id: h for h in self.hospitals}
        for reply in replies:
            hospital = by_node.get(reply.metadata.src_node_id)
            if hospital is None:
                continue
            try:
                if reply.has_error():
                    raise ValueError(reply_failure(reply, self.rounds, "search").reason)
                per_hospital[hospital.hospital_id] = decode_losses(
                    reply.content["metrics"], len(coefficients), self.settings.loss_clip
                )
            except (ValueError, KeyError, TypeError) as error:
                self._leave_out(hospital, str(error))
        for hospital in [h for h in self.hospitals if h.hospital_id not in per_hospital]:
            self._leave_out(hospital, "no search reply within strategy.federated.timeout_s")
        if not per_hospital:
            raise RuntimeError(f"federated search round {self.rounds}: no hospital returned its scores")
        tasks = {h.hospital_id: h.task for h in self.hospitals}
        pooled = [
            pooled_loss({h: v[i] for h, v in per_hospital.items()}, self.sizes, tasks) for i in range(len(coefficients))
        ]
        self.seconds += time.perf_counter() - started
        log(
            INFO,
            "federated search round %d: %d candidates scored at %d hospitals",
            self.rounds,
            len(pooled),
            len(per_hospital),
        )
        return pooled

    def _leave_out(self, hospital: HospitalReply, reason: str) -> None:
        if hospital in self.hospitals:
            self.hospitals.remove(hospital)
            self.failures.append(
                Failure(hospital.hospital_id, "search", reason, node_id=hospital.node_id, round=self.rounds)
            )
            log(WARNING, "federated search: hospital %d left out of the search (%s)", hospital.hospital_id, reason)

    def _message(
        self, to: HospitalReply, kind: Kind, adapters: Sequence[HospitalReply], coefficients: list[list[float]]
    ) -> Message:
        s = self.settings
        arrays = {HEADS: state_to_arrayrecord(head_state(self.heads, [to.task]))}
        peers = None
        ranks = None
        if s.share == "adapters" and not self.sent_adapters:
            peers = {str(h.hospital_id): {"r": h.lora_r, "alpha": h.lora_alpha, "task": h.task} for h in adapters}
            arrays |= {f"{PEER_PREFIX}{h.hospital_id}": state_to_arrayrecord(lora_state(h.state)) for h in adapters}
        if s.share == "merged":
            if kind == "mixture":
                raise ValueError(
                    "a Mixture's components are the hospitals' own adapters: search it with share=adapters."
                )
            ranks = []
            for i, w in enumerate(coefficients):
                state, rank = fused_candidate([h.state for h in adapters], [h.lora_scale for h in adapters], w)
                arrays[f"{CANDIDATE_PREFIX}{i}"] = state_to_arrayrecord(state)
                ranks.append({"r": rank, "alpha": float(rank)})
        request = SearchRequest(
            kind=kind,
            share=s.share,
            hospitals=[h.hospital_id for h in adapters],
            coefficients=coefficients,
            loss_clip=s.loss_clip,
            dp_noise=s.dp_noise,
            max_val=s.max_val,
            seed=self.seed,
            peers=peers,
            ranks=ranks,
        )
        config = instructions(self.experiment_json, **{"server-round": self.rounds})
        return Message(
            content=search_content(request, config, arrays), dst_node_id=to.node_id, message_type=MESSAGE_TYPE
        )

    def record(self) -> dict[str, Any]:
        """What results.json keeps about the search: rounds, seconds, the exposure chosen, failures."""
        s = self.settings
        return {
            "rounds": self.rounds,
            "seconds": self.seconds,
            "share": s.share,
            "exposure": (
                "every site received every hospital's adapter"
                if s.share == "adapters"
                else "every site received each candidate's fused adapter"
            ),
            "returned": "one loss per candidate per hospital",
            "dp_noise": s.dp_noise,
            "loss_clip": s.loss_clip,
            "max_val": s.max_val,
            "hospitals": [h.hospital_id for h in self.hospitals],
        }
