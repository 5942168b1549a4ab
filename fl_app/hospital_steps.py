"""What a hospital does with a message: load its data, train its adapter, evaluate model versions.

No Flower here beyond the record types, so these steps run in tests without a simulation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import secrets
import time
import zlib
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fl_app.adapter_keys import head_state, lora_module, lora_state
from fl_app.calibration import CalibrationSet, DistillSettings, calibration_records, distill_calibration_set
from fl_app.calibration.distill import PrivateMeans
from fl_app.candidate_scoring import (
    CANDIDATE_PREFIX,
    HEADS,
    LOSSES,
    PEER_PREFIX,
    REQUEST,
    SearchRequest,
    clipped_losses,
    fused_candidate,
    released_loss,
    validation_subset,
)
from fl_app.data import HospitalData, SplitArrays, experiment_tasks, load_site, site_config
from fl_app.data.worker_cache import DEFAULT_DATA_CACHE, cached_hospital_data
from fl_app.merge_stats import (
    STATS,
    StatsRequest,
    diagonal_fisher,
    head_prefix,
    input_grams,
    sampled_log_likelihood,
    stats_bytes,
)
from fl_app.model.adapter import arrayrecord_to_state, fit_rank, state_to_arrayrecord
from fl_app.model.backbone import backbone_image_size, pooled_features
from fl_app.model.lora import HospitalModel, hospital_model
from fl_app.model.mixture import mixture_probabilities
from fl_app.pooled_auc import score_histograms, sparse_histograms
from fl_app.privacy.accounting import (
    COUNT_MECHANISM,
    COUNT_NOISE,
    Plan,
    check_budget,
    epsilon_spent,
    plan,
    training_plan,
)
from fl_app.privacy.dp_sgd import site_secret_seed, train_adapter_dp
from fl_app.privacy.ledger import (
    DEFAULT_SITE_LEDGER,
    LEDGER_KEY,
    Ledger,
    bytes_fingerprint,
    file_fingerprint,
    open_disk_ledger,
)
from fl_app.privacy.settings import (
    LEDGER_PER_JOB,
    NoiseTarget,
    PrivacySettings,
    default_delta,
    privacy_settings,
    refuse_below_site_budget,
    refuse_plain_calibration,
)
from fl_app.protocol import (
    ARRAYS,
    CONFIG,
    DATA_FINGERPRINT_HEX,
    HOSPITAL,
    METRICS,
    VERSION_PREFIX,
    hospital_record,
    read_experiment,
)
from fl_app.training import (
    medmnist_metrics,
    model_pixels,
    pick_device,
    predict_scores,
    to_pixels,
    train_adapter,
    train_settings,
    validation_score,
)


def task_outputs(experiment: Mapping[str, Any]) -> dict[str, int]:
    """Every task of the experiment and its number of outputs: the heads every process builds."""
    return {name: task.n_outputs for name, task in experiment_tasks(experiment["data"]).items()}


def hospital_seed(seed: int, hospital_id: int, server_round: int) -> int:
    """A distinct, reproducible seed per (experiment seed, hospital, round)."""
    return zlib.crc32(f"{seed}/{hospital_id}/{server_round}".encode()) & 0x7FFFFFFF


def hospital_lora(
    experiment: Mapping[str, Any], hospital_id: int, node_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The LoRA settings of one hospital: `lora`, with its own rank where hospitals differ in capacity.

    The rank comes from the node config's `lora-r` (a real site), else `simulation.lora_r[id % len]`
    (sent as `lora_ranks`), else `lora.r`. Alpha: `lora-alpha` / `simulation.lora_alpha[id % len]`,
    else lora.alpha · r / lora.r, which keeps PEFT's scale alpha / r the same at every hospital.
    """
    lora = dict(experiment["lora"])
    node_config = node_config or {}
    ranks, alphas = experiment.get("lora_ranks") or [], experiment.get("lora_alphas") or []
    r = node_config.get("lora-r") or (ranks[hospital_id % len(ranks)] if ranks else None)
    if r is None:
        return lora
    alpha = node_config.get("lora-alpha") or (alphas[hospital_id % len(alphas)] if alphas else None)
    if alpha is None:
        alpha = float(lora["alpha"]) * int(r) / int(lora["r"])
    return lora | {"r": int(r), "alpha": float(alpha)}


class Hospital:
    """One hospital's data and the process-wide model it trains on."""

    def __init__(
        self, experiment: Mapping[str, Any], data: HospitalData, node_config: Mapping[str, Any] | None = None
    ) -> None:
        self.experiment = experiment
        self.id = data.hospital_id
        self.data = data
        self.lora = hospital_lora(experiment, data.hospital_id, node_config)
        node_config = node_config or {}
        self.deployed = "data-path" in node_config  # a site holding real data (fl_app.data.site)
        site = site_config(node_config) if self.deployed else None
        # 64 bits of its data's SHA-256: the coordinator notices a change between runs (another party
        # holding this hospital's key has other data), learning only "same file or not".
        self.data_fingerprint = file_fingerprint(site.data_path)[:DATA_FINGERPRINT_HEX] if site else None
        site_epsilon = node_config.get("privacy-epsilon")  # the site's own DP budget (fl_app.data.site)
        self.site_budget = NoiseTarget(epsilon=float(site_epsilon)) if site_epsilon is not None else None
        site_delta = node_config.get("privacy-delta")  # the site's own δ (default: 1 / (10 · released n))
        self.site_delta = float(site_delta) if site_delta is not None else None
        self.released_n_train: int | None = None  # under DP: the noised count this hospital released
        self.model: HospitalModel = hospital_model(experiment["model"], task_outputs(experiment))
        self.device = pick_device()
        self.model.backbone.to(self.device)
        self.image_size = backbone_image_size(self.model.backbone)

    @property
    def task(self) -> str:
        return self.data.task.name

    def record(self) -> ConfigRecord:
        """Who answered; under DP the training-set size is the released (noised) count."""
        lora = self.lora
        return hospital_record(
            self.id,
            self.task,
            self.released_n_train if self.released_n_train is not None else len(self.data.train),
            len(self.data.val),
            len(self.data.test),
            self.data.data_source,
            int(lora["r"]),
            float(lora["alpha"]),
            self.data_fingerprint,
        )

    def train(
        self,
        start: ArrayRecord | None,
        server_round: int,
        calibration: Mapping[str, Any] | None = None,
        ledger: Ledger | None = None,
        stats: StatsRequest | None = None,
    ) -> RecordDict:
        """Fine-tune from `start` (or a fresh adapter seeded by the experiment seed); reply content.

        With `calibration` settings (sent only by merge methods that need one) the reply also
        carries a distilled calibration set; with a `stats` request (RegMean, Fisher merging) the
        statistics of `fl_app.merge_stats` on the training split, under `merge-stats`. Under `privacy`, training is DP-SGD and every release
        is recorded in `ledger` (the hospital's: on the site's disk, or per job in simulation) before
        it runs; its ε is in the reply's metrics. Under DP the reply carries no training loss and the
        noised training-set size (docs/privacy.md "What leaves a site").
        """
        lora, train = self.lora, self.experiment["train"]
        privacy = privacy_settings(self.experiment.get("privacy"))
        ledger = ledger if ledger is not None else Ledger()
        refuse_below_site_budget(privacy, self.site_budget.epsilon if self.site_budget else None)
        self._refuse_simulation_settings(privacy)
        if calibration:
            refuse_plain_calibration(privacy)  # before any work: a non-private set is never made
        if stats is not None and stats.kinds and privacy.enabled:
            raise ValueError(
                f"the server asks for merge statistics {list(stats.kinds)} under privacy.enabled=true; they are "
                "second moments of the training data and have no DP release yet. The hospital refuses: merge with a "
                "data-free method (strategy.merge=task_arithmetic, ties, ...) and strategy.stats=[] under DP."
            )
        name = self.model.use_adapter(lora)
        self.model.reset_adapter(name, seed=int(self.experiment["seed"]))
        if start is not None and len(start) > 0:
            # a global adapter of a larger rank (FedAvg over mixed ranks) is truncated to this hospital's
            self.model.load_adapter_state(name, fit_rank(arrayrecord_to_state(start), int(lora["r"])), self.task)
        self.model.peft.to(self.device)
        freeze_lora_a(self.model.peft, name, bool(lora.get("freeze_a", False)))
        settings = train_settings(train)
        seed = hospital_seed(int(self.experiment["seed"]), self.id, server_round)
        dp_metrics: dict[str, float] = {}
        if privacy.enabled:
            result, dp_metrics = self._train_private(settings, seed, privacy, ledger, server_round)
            self.released_n_train = self.released_count(privacy, ledger)
        else:
            result = train_adapter(
                self.model.peft,
                self.data.task,
                self.data.train,
                settings,
                self.image_size,
                seed,
                self.device,
                validate=lambda: validation_score(self._metrics(self.data.val)),
            )
        val = self._metrics(self.data.val)
        # Same keys from every hospital (Flower's FedAvg requires it): NaN when AUC is undefined.
        metrics = {
            "num-examples": self.released_n_train if privacy.enabled else len(self.data.train),
            "train-loss": result.loss,
            "val-acc": val["acc"],
            "val-auc": val["auc"],
            "best-epoch": result.best_epoch,
            **dp_metrics,
        }
        if privacy.enabled:  # the loss on the training patients is not accounted: it stays at the site
            del metrics["train-loss"]
        state = self.model.adapter_state(name, [self.task])
        merge_stats = self.merge_statistics(name, stats, seed) if stats is not None and stats.kinds else {}
        if merge_stats:
            metrics["merge-stats-bytes"] = stats_bytes(merge_stats)
        reply = RecordDict(
            {ARRAYS: state_to_arrayrecord(state), METRICS: MetricRecord(metrics), HOSPITAL: self.record()}
        )
        if merge_stats:
            reply[STATS] = state_to_arrayrecord(merge_stats)
        if calibration:
            calibration_set = self.calibration_set(DistillSettings(**calibration), privacy, ledger)
            if privacy.enabled:
                delta = self.delta(privacy, ledger)
                metrics["dp-epsilon-distill"] = calibration_set.epsilon
                metrics["dp-epsilon"] = ledger.epsilon(delta)  # training and distillation composed
                reply[METRICS] = MetricRecord(metrics)
            for key, record in calibration_records(calibration_set).items():
                reply[key] = record
        return reply

    def merge_statistics(self, name: str, request: StatsRequest, seed: int) -> dict[str, torch.Tensor]:
        """The requested statistics of the trained adapter `name` on the training split (`fl_app.merge_stats`)."""
        peft, task, train = self.model.peft, self.data.task, self.data.train
        released = self.model.adapter_parameters(name, [self.task])
        peft.eval()
        stats: dict[str, torch.Tensor] = {}
        if "gram" in request.kinds:
            layers = {module: False for module in dict.fromkeys(k for k in map(lora_module, released) if k)}
            layers |= {head_prefix(k): True for k in head_state(released, [self.task]) if k.endswith(".weight")}
            batch = int(self.experiment["eval"]["batch_size"])
            batches = (
                to_pixels(train.images[start : start + batch], self.image_size).to(self.device)
                for start in range(0, len(train), batch)
            )
            stats |= input_grams(peft, layers, batches, lambda pixels: peft(pixel_values=pixels, task=self.task))
        if "fisher" in request.kinds:
            parameters = released
            generator = torch.Generator().manual_seed(seed)
            order = torch.randperm(len(train), generator=generator)[: request.fisher_examples].tolist()
            examples = (to_pixels(train.images[i : i + 1], self.image_size).to(self.device) for i in order)

            def log_likelihood(pixels: torch.Tensor) -> torch.Tensor:
                logits = peft(pixel_values=pixels, task=self.task)
                return sampled_log_likelihood(logits, task.multi_label, generator)

            stats |= diagonal_fisher(parameters, examples, log_likelihood)
        return stats

    def _train_private(
        self, settings, seed: int, privacy: PrivacySettings, ledger: Ledger, server_round: int
    ) -> tuple[Any, dict[str, float]]:
        """DP-SGD with noise calibrated to the run's budget (all planned rounds and the noised count),
        checked against the server's per-run target and the site's lifetime budget, recorded, then run."""
        n = self.released_count(privacy, ledger)
        delta = self.delta(privacy, ledger)
        rounds = int(self.experiment.get("privacy_rounds", 1))
        release = training_plan(
            privacy.target, delta, n, settings.batch_size, settings.epochs, rounds, overhead=[COUNT_MECHANISM]
        )
        what = f"hospital {self.id}'s round {server_round}"
        ledger.spend(release.mechanism, lambda history: self._check(history, ledger, release, privacy.target, what))
        result = train_adapter_dp(
            self.model.peft,
            self.data.task,
            self.data.train,
            settings,
            release,
            privacy.max_grad_norm,
            self.image_size,
            seed if privacy.simulation.seeded_noise else None,
            self.device,
        )
        trained = [m for m in ledger.history[ledger.run_start :] if m[:2] == release.mechanism[:2]]
        return result, {
            "dp-epsilon": ledger.epsilon(delta),  # everything this data's ledger holds
            "dp-epsilon-train": epsilon_spent(trained, delta),
            "dp-delta": delta,
            "dp-noise-multiplier": release.noise_multiplier,
            "dp-sample-rate": release.sample_rate,
            "dp-max-grad-norm": privacy.max_grad_norm,
            "dp-steps": sum(steps for _, _, steps in trained),
            "dp-releases": len(ledger.history),
        }

    def _check(self, history, ledger: Ledger, release, target: NoiseTarget, what: str) -> float:
        """The server's target bounds this run's releases; the site's own ε bounds everything on its ledger."""
        epsilon = check_budget(history[ledger.run_start :], release, target, what)
        if self.site_budget is not None:
            check_budget(history, release, self.site_budget, what, "the node config's privacy-epsilon")
        return epsilon

    def _refuse_simulation_settings(self, privacy: PrivacySettings) -> None:
        if privacy.enabled and privacy.simulation.seeded_noise and self.deployed:
            raise ValueError(
                "the server asked for privacy.simulation.seeded_noise=true: DP noise drawn from the experiment seed, "
                "which the server knows (it could subtract the noise). This site holds real data (node config "
                "data-path) and refuses; run with privacy.simulation.seeded_noise=false."
            )

    def released_count(self, privacy: PrivacySettings, ledger: Ledger) -> int:
        """The training-set size as this hospital releases it under DP: n + N(0, COUNT_NOISE²) (sensitivity
        1), rounded, at least 1; drawn once per ledger (recorded as a Gaussian mechanism), then reused."""
        if ledger.count is None:
            ledger.spend(COUNT_MECHANISM)
            n = len(self.data.train)
            if privacy.simulation.seeded_noise:
                draw = float(torch.randn((), generator=torch.Generator().manual_seed(self._seed(-2))))
            else:
                draw = secrets.SystemRandom().gauss(0.0, 1.0)
            ledger.count = max(1, round(n + COUNT_NOISE * draw))
            ledger.save()
        self.released_n_train = int(ledger.count)
        return int(ledger.count)

    def delta(self, privacy: PrivacySettings, ledger: Ledger) -> float:
        """δ this hospital accounts at: its own (node config `privacy-delta`, else 1 / (10 · released n)); a
        server request may only be stricter. Never 1/n or more (that lets a record out in the clear)."""
        n = self.released_count(privacy, ledger)
        own = self.site_delta if self.site_delta is not None else default_delta(n)
        requested = privacy.delta
        if requested is not None and self.deployed and requested > own:
            raise ValueError(
                f"the server asked for privacy.delta={requested:g}, looser than this site's δ={own:.3g} "
                "(node config privacy-delta, default 1 / (10 · n)); the hospital refuses. Send a smaller "
                "privacy.delta or none."
            )
        delta = float(requested) if requested is not None else own
        if not 0 < delta < 1.0 / len(self.data.train):
            raise ValueError(
                f"δ={delta:g} is not below 1 / n for this hospital's training split: a δ that large allows "
                "releasing a patient's record in the clear. The hospital refuses; set privacy.delta=null "
                "(1 / (10 · n)) or smaller."
            )
        return delta

    def _seed(self, server_round: int) -> int:
        return hospital_seed(int(self.experiment["seed"]), self.id, server_round)

    def calibration_set(
        self, settings: DistillSettings, privacy: PrivacySettings | None = None, ledger: Ledger | None = None
    ) -> CalibrationSet:
        """Distil the training split under the frozen backbone (LoRA switched off), seeded per hospital.

        Under privacy the real images are read only through DP class means; the release is added to
        `ledger` and the set carries its own ε.
        """
        peft = self.model.peft
        private = None
        seed = self._seed(-1)
        if privacy is not None and privacy.enabled:
            refuse_plain_calibration(privacy)
            self._refuse_simulation_settings(privacy)
            ledger = ledger if ledger is not None else Ledger()
            dp = privacy.distill
            delta = self.delta(privacy, ledger)
            release = plan(dp.target, delta, dp.sample_rate, settings.iterations)
            what = f"hospital {self.id}'s calibration set"

            def check(history) -> None:
                check_budget([], release, dp.target, what)
                if self.site_budget is not None:
                    check_budget(history, release, self.site_budget, what, "the node config's privacy-epsilon")

            ledger.spend(release.mechanism, check)  # recorded before the data is read
            private = PrivateMeans(dp.sample_rate, dp.max_norm, release.noise_multiplier)
            seed = seed if privacy.simulation.seeded_noise else site_secret_seed()

        with peft.disable_adapter():
            distilled = distill_calibration_set(
                self.frozen_embedding,
                self.data.task,
                self.data.train,
                settings,
                seed,
                private,
            )
        if private is None:
            return distilled
        return dataclasses.replace(distilled, epsilon=epsilon_spent([release.mechanism], delta))

    def search_losses(
        self, content: RecordDict, peers: Mapping[int, dict[str, Any]], ledger: Ledger | None = None
    ) -> RecordDict:
        """MedForge's federated search: one loss per candidate on this hospital's validation split.

        Candidates come fused (`candidate:<i>` arrays) or as coefficients over `peers` (every
        hospital's adapter, received once: {id: {state, r, alpha}}). Only the losses leave the site;
        with `dp_noise` each is a Gaussian release added to `ledger` (fl_app.candidate_scoring).
        """
        request = SearchRequest.from_json(str(content[CONFIG][REQUEST]))
        privacy = privacy_settings(self.experiment.get("privacy"))
        ledger = ledger if ledger is not None else Ledger()
        if privacy.enabled and request.dp_noise <= 0:
            raise ValueError(
                "under privacy=dp the search's losses must be noised; set strategy.federated.dp_noise > 0."
            )
        subset = validation_subset(len(self.data.val), request.max_val, request.seed + self.id)
        if len(subset) == 0:
            raise ValueError(f"hospital {self.id} has no validation images to score search candidates on.")
        val = SplitArrays(self.data.val.images[subset], self.data.val.labels[subset])
        heads = arrayrecord_to_state(content[HEADS])
        if request.kind == "mixture":
            components = [
                self._split_probabilities(
                    val, {**lora_state(peers[h]["state"]), **heads}, peers[h]["r"], peers[h]["alpha"]
                )
                for h in request.hospitals
            ]
            probabilities = [mixture_probabilities(components, c) for c in request.coefficients]
        else:
            probabilities = [
                self._split_probabilities(val, *self._candidate(content, request, i, peers, heads))
                for i in range(len(request.coefficients))
            ]
        if privacy.enabled:  # checked and recorded (on the site's disk) before any loss is computed to leave
            self._refuse_simulation_settings(privacy)
            release = Plan(request.dp_noise, 1.0, len(probabilities), self.delta(privacy, ledger))
            what = f"hospital {self.id}'s search scores"
            ledger.spend(release.mechanism, lambda history: self._check(history, ledger, release, privacy.target, what))
        elif request.dp_noise > 0:
            ledger.history.append((request.dp_noise, 1.0, len(probabilities)))
        losses = [
            released_loss(clipped_losses(p, val.labels, request.loss_clip), request.loss_clip, request.dp_noise)
            for p in probabilities
        ]
        metrics = {"num-examples": len(val), LOSSES: losses}
        return RecordDict({METRICS: MetricRecord(metrics), HOSPITAL: self.record()})

    def _candidate(
        self, content: RecordDict, request: SearchRequest, index: int, peers, heads
    ) -> tuple[dict[str, torch.Tensor], int, float]:
        """Candidate `index` as (state, rank, alpha): as sent, or fused here from the peers' adapters."""
        if request.share == "merged":
            shape = request.ranks[index]
            state = arrayrecord_to_state(content[f"{CANDIDATE_PREFIX}{index}"])
            return {**state, **heads}, int(shape["r"]), float(shape["alpha"])
        adapters = [peers[h] for h in request.hospitals]
        fused, rank = fused_candidate(
            [a["state"] for a in adapters], [a["alpha"] / a["r"] for a in adapters], request.coefficients[index]
        )
        return {**fused, **heads}, rank, float(rank)

    def _split_probabilities(self, split: SplitArrays, state: dict[str, torch.Tensor], rank, alpha) -> torch.Tensor:
        adapter = self.model.use_adapter(self.experiment["lora"], rank=int(rank), alpha=float(alpha))
        self.model.load_adapter_state(adapter, state, self.task)
        self.model.peft.to(self.device)
        batch = int(self.experiment["eval"]["batch_size"])
        return torch.from_numpy(
            predict_scores(self.model.peft, self.data.task, split, self.image_size, batch, self.device)
        )

    def frozen_embedding(self, unit: torch.Tensor) -> torch.Tensor:
        """Pooled features of the pretrained backbone (call inside `peft.disable_adapter()` for the
        frozen one): images (N, C, H, W) in [0, 1] -> (N, D). Distillation matches these; the audit measures in them."""
        backbone = self.model.peft.base_model.model.backbone
        return pooled_features(backbone, model_pixels(unit.to(self.device), self.image_size)).cpu()

    def evaluate(self, content: RecordDict, ledger: Ledger | None = None) -> RecordDict:
        """Test ACC/AUC of every version in the message on this hospital's test split.

        Versions without a head for this hospital's task are skipped (a progressive version
        before that task arrived). A mixture version mixes the scores of its components, each
        run with the mixture's heads: one forward pass per component (timed, and reused when a
        component and its head are unchanged between versions).
        """
        privacy = privacy_settings(self.experiment.get("privacy"))
        if privacy.enabled:  # the record names the released count, never the exact n
            self.released_count(privacy, ledger if ledger is not None else Ledger())
        versions = json.loads(str(content[CONFIG]["versions"]))
        states = {name: arrayrecord_to_state(content[VERSION_PREFIX + name]) for name in versions}
        metrics: dict[str, float] = {"num-examples": len(self.data.test)}
        cache: dict[tuple[str, str], tuple[np.ndarray, float]] = {}
        for version, meta in versions.items():
            if self.task not in meta.get("tasks", [self.task]):
                continue
            if "mixture" in meta:
                parts = []
                for component, coefficient in meta["mixture"].items():
                    state = {**lora_state(states[component]), **states[version]}
                    parts.append((coefficient, *self._cached_scores(cache, component, state, versions[component])))
                scores = mixture_probabilities(
                    [torch.from_numpy(p) for _, p, _ in parts], [c for c, _, _ in parts]
                ).numpy()
                seconds, passes = sum(t for _, _, t in parts), len(parts)
            else:
                scores, seconds = self._cached_scores(cache, version, states[version], meta)
                passes = 1
            metrics[f"{version}/seconds"] = seconds
            metrics[f"{version}/forward-passes"] = passes
            for metric, value in medmnist_metrics(self.data.task, self.data.test.labels, scores).items():
                if not math.isnan(value):
                    metrics[f"{version}/{metric}"] = value
            # Lets the server compute the AUC of all hospitals' test splits together.
            histograms = score_histograms(self.data.task, self.data.test.labels, scores)
            metrics[f"{version}/auc-bins"], metrics[f"{version}/auc-counts"] = sparse_histograms(histograms)
            metrics[f"{version}/auc-size"] = histograms.size
        return RecordDict({METRICS: MetricRecord(metrics), HOSPITAL: self.record()})

    def _cached_scores(
        self, cache, name: str, state: dict[str, torch.Tensor], meta: Mapping[str, Any]
    ) -> tuple[np.ndarray, float]:
        """Test scores of `state` and the seconds its forward pass took; computed once per (LoRA, head)."""
        head = b"".join(t.numpy().tobytes() for _, t in sorted(head_state(state, [self.task]).items()))
        key = (name, hashlib.sha1(head).hexdigest())
        if key not in cache:
            started = time.perf_counter()
            adapter = self.model.use_adapter(self.experiment["lora"], rank=int(meta["r"]), alpha=float(meta["alpha"]))
            self.model.load_adapter_state(adapter, state, self.task)
            self.model.peft.to(self.device)
            scores = self._scores(self.data.test)
            cache[key] = (scores, time.perf_counter() - started)
        return cache[key]

    def _scores(self, split) -> np.ndarray:
        batch = int(self.experiment["eval"]["batch_size"])
        return predict_scores(self.model.peft, self.data.task, split, self.image_size, batch, self.device)

    def _metrics(self, split) -> dict[str, float]:
        return medmnist_metrics(self.data.task, split.labels, self._scores(split))


def freeze_lora_a(peft, adapter: str, frozen: bool) -> None:
    """FFA-LoRA (Sun et al., ICLR 2024): keep every LoRA A at its seeded random init and train B only.

    Hospitals share the seed, so they share A: task arithmetic then equals FedAvg of the Bs exactly,
    and DP-SGD noises half the LoRA values. Set each message: PEFT's set_adapter re-enables A.
    """
    for name, parameter in peft.named_parameters():
        if f".lora_A.{adapter}." in name:
            parameter.requires_grad_(not frozen)


def simulated_hospital(
    experiment: Mapping[str, Any],
    hospital_id: int,
    num_hospitals: int,
    node_config: Mapping[str, Any] | None = None,
) -> Hospital:
    """Hospital `hospital_id` of a simulation: its share of its task (fl_app.data.load_hospital),
    from this worker's bounded cache (`simulation.data_cache_size` hospitals)."""
    capacity = int(experiment.get("data_cache_size", DEFAULT_DATA_CACHE))
    return Hospital(
        experiment,
        cached_hospital_data(experiment["data"], hospital_id, num_hospitals, int(experiment["seed"]), capacity),
        node_config,
    )


def hospital_for(experiment: Mapping[str, Any], node_config: Mapping[str, Any]) -> Hospital:
    """The hospital this node plays: a site's own data (`data-path`), or a simulated `partition-id`."""
    site = site_config(node_config)
    if site is None:
        return simulated_hospital(
            experiment, int(node_config["partition-id"]), int(node_config["num-partitions"]), node_config
        )
    image_size = backbone_image_size(hospital_model(experiment["model"], task_outputs(experiment)).backbone)
    return Hospital(experiment, load_site(experiment["data"], site, image_size, int(experiment["seed"])), node_config)


def ledger_key(experiment: Mapping[str, Any]) -> str:
    """Where a simulated node keeps a job's ledger in its context state: one per sweep job."""
    job = str(experiment.get("job", ""))
    return f"{LEDGER_KEY}/{job}" if job else LEDGER_KEY


def open_ledger(
    hospital: Hospital, experiment: Mapping[str, Any], node_config: Mapping[str, Any], state: MutableMapping
) -> Ledger:
    """This hospital's DP ledger.

    A deployed site: on its own disk (node config `privacy-ledger`, default ~/.medforge/privacy-ledger),
    keyed by its data (path and content fingerprint), whatever job or run the server names. A simulated
    hospital: one ledger per sweep job in the node's context `state` (privacy.simulation.ledger=job), or
    on disk in the folder privacy.simulation.ledger names, keyed by its training split.
    """
    privacy = privacy_settings(experiment.get("privacy"))
    site = site_config(node_config)
    if site is not None:
        folder = Path(str(node_config.get("privacy-ledger") or DEFAULT_SITE_LEDGER))
        ledger = open_disk_ledger(folder, str(site.data_path.resolve()), file_fingerprint(site.data_path))
    elif privacy.simulation.ledger != LEDGER_PER_JOB:
        train = hospital.data.train
        fingerprint = bytes_fingerprint(train.images.tobytes(), train.labels.tobytes())
        where = f"simulated:{hospital.task}/hospital-{hospital.id}"
        ledger = open_disk_ledger(Path(privacy.simulation.ledger), where, fingerprint)
    else:
        key = ledger_key(experiment)
        return Ledger.from_json(str(state[key]["history"])) if key in state else Ledger()
    start = f"{LEDGER_KEY}-run-start/{experiment.get('job', '')}"
    if start not in state:  # this run's first message: what came before is earlier runs'
        state[start] = ConfigRecord({"entries": len(ledger.history)})
    ledger.run_start = int(state[start]["entries"])
    return ledger


def keep_ledger(ledger: Ledger, experiment: Mapping[str, Any], state: MutableMapping) -> None:
    """Keep the ledger for the next message (before the reply leaves): on disk, or in the context state."""
    if ledger.path is not None:
        ledger.persist()
    else:
        state[ledger_key(experiment)] = ConfigRecord({"history": ledger.to_json()})


def hospital_id_of(node_config: Mapping[str, Any]) -> Any:
    """The hospital id a node config names (`hospital-id` at a site, `partition-id` in simulation), or "?"."""
    return node_config.get("hospital-id", node_config.get("partition-id", "?"))


def experiment_of(content: RecordDict) -> dict[str, Any]:
    return read_experiment(content[CONFIG])


def search_peers(content: RecordDict, state: RecordDict, key: str) -> dict[int, dict[str, Any]]:
    """The adapters a `share=adapters` search runs on: kept in the node's `state` (under `key`) from the
    message that carried them, so later messages carry only coefficients."""
    request = SearchRequest.from_json(str(content[CONFIG][REQUEST]))
    if request.peers is not None:
        state[key] = ConfigRecord({"peers": json.dumps(request.peers)})
        for hospital in request.peers:
            state[f"{key}/{hospital}"] = content[f"{PEER_PREFIX}{hospital}"]
    if key not in state:
        return {}
    shapes = json.loads(str(state[key]["peers"]))
    return {
        int(h): {"state": arrayrecord_to_state(state[f"{key}/{h}"]), "r": int(m["r"]), "alpha": float(m["alpha"])}
        for h, m in shapes.items()
    }
