"""Fail fast on a bad experiment, before Ray or a SuperLink starts, naming key, value and choices."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from fl_app.data import validate_data_config
from fl_app.model.backbone import build_backbone
from fl_app.model.lora import resolve_lora_targets
from fl_app.privacy.settings import privacy_settings, validate_privacy
from fl_app.training import CLASS_WEIGHTINGS, OPTIMIZERS, SCHEDULES
from strategies import strategy_spec


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def validate_experiment(cfg: DictConfig) -> None:
    """Raise ValueError on the first invalid setting."""
    sim, strategy, lora, train = cfg.simulation, cfg.strategy, cfg.lora, cfg.train
    _require(int(sim.num_hospitals) >= 1, f"simulation.num_hospitals={sim.num_hospitals} must be >= 1.")
    _require(
        float(sim.client_cpus) >= 1 and float(sim.client_cpus).is_integer(),
        f"simulation.client_cpus={sim.client_cpus} must be a whole number >= 1 (Flower reserves whole CPUs per hospital).",
    )
    _require(
        float(sim.get("data_cache_size", 0)).is_integer() and float(sim.get("data_cache_size", 0)) >= 0,
        f"simulation.data_cache_size={sim.get('data_cache_size')} must be a whole number >= 0 (hospitals' data kept per worker; 0 = none).",
    )
    ray_cpus = sim.get("ray_cpus")
    _require(
        ray_cpus is None or (float(ray_cpus).is_integer() and float(sim.client_cpus) <= float(ray_cpus)),
        f"simulation.ray_cpus={ray_cpus} must be null (all cores) or a whole number >= simulation.client_cpus={sim.client_cpus}.",
    )
    _require(
        ray_cpus is None or not os.environ.get("RAY_ADDRESS"),
        f"simulation.ray_cpus={ray_cpus} sizes a local Ray; with RAY_ADDRESS the cluster's nodes set their CPUs (ray start --num-cpus): use simulation.ray_cpus=null.",
    )
    _require(float(sim.client_gpus) >= 0, f"simulation.client_gpus={sim.client_gpus} must be >= 0 (fractions allowed).")
    _require(  # on an existing Ray cluster (RAY_ADDRESS) the GPUs may sit on other nodes: Ray checks them
        float(sim.client_gpus) == 0 or torch.cuda.is_available() or bool(os.environ.get("RAY_ADDRESS")),
        f"simulation.client_gpus={sim.client_gpus} but no CUDA GPU is visible here; "
        "use simulation.client_gpus=0 on CPU-only machines, or set RAY_ADDRESS to a Ray cluster whose nodes have GPUs.",
    )
    spec = strategy_spec(strategy)  # an unknown strategy fails here, listing the choices
    if spec.rounds:
        _require(int(strategy.rounds) >= 1, f"strategy.rounds={strategy.rounds} must be >= 1.")
    _require(
        1 <= int(strategy.min_hospitals) <= int(sim.num_hospitals),
        f"strategy.min_hospitals={strategy.min_hospitals} must be between 1 and "
        f"simulation.num_hospitals={sim.num_hospitals}.",
    )
    for key in ("train_timeout_s", "evaluate_timeout_s"):
        _require(
            strategy.get(key) is None or float(strategy.get(key)) > 0,
            f"strategy.{key}={strategy.get(key)} must be a positive number of seconds.",
        )
    _require(
        isinstance(strategy.get("cross_evaluation", False), bool),
        f"strategy.cross_evaluation={strategy.get('cross_evaluation')!r} must be true (every hospital adapter "
        "at every hospital) or false (each at its own hospital).",
    )
    for key in ("crash_hospitals", "fail_hospitals"):
        _require(
            all(isinstance(h, int) for h in sim.get(key) or []),
            f"simulation.{key}={sim.get(key)} must be a list of hospital ids, e.g. [1].",
        )
    _require(
        all(float(s) >= 0 for s in (sim.get("slow_hospitals") or {}).values()),
        f"simulation.slow_hospitals={sim.get('slow_hospitals')} must map hospital ids to seconds >= 0, e.g. {{1: 60}}.",
    )
    _require(int(lora.r) >= 1, f"lora.r={lora.r} is not valid; the LoRA rank must be a positive integer.")
    _require(float(lora.alpha) > 0, f"lora.alpha={lora.alpha} must be > 0.")
    _require(0 <= float(lora.dropout) < 1, f"lora.dropout={lora.dropout} must be in [0, 1).")
    _validate_hospital_ranks(cfg)
    _require(int(train.local_epochs) >= 1, f"train.local_epochs={train.local_epochs} must be >= 1.")
    _require(float(train.lr) > 0, f"train.lr={train.lr} must be > 0.")
    _require(int(train.batch_size) >= 1, f"train.batch_size={train.batch_size} must be >= 1.")
    _require(
        train.optimizer in OPTIMIZERS, f"train.optimizer={train.optimizer!r} is not valid; choose one of {OPTIMIZERS}."
    )
    _require(train.schedule in SCHEDULES, f"train.schedule={train.schedule!r} is not valid; choose one of {SCHEDULES}.")
    _require(
        train.class_weighting in CLASS_WEIGHTINGS,
        f"train.class_weighting={train.class_weighting!r} is not valid; choose one of {CLASS_WEIGHTINGS}.",
    )
    validate_data_config(cfg.data, int(sim.num_hospitals))
    _validate_lora_targets(cfg)
    _require(
        isinstance(lora.get("freeze_a", False), bool), f"lora.freeze_a={lora.get('freeze_a')} must be true or false."
    )
    _require(
        spec.hospitals_train or not privacy_settings(cfg.get("privacy")).enabled,
        f"strategy={strategy.name} pools every hospital's images at the server (no hospital trains): differential "
        "privacy at the hospital does not apply. Run it with privacy=none.",
    )
    validate_privacy(cfg.get("privacy"), train)
    spec.check(cfg)  # the strategy's own settings (strategies/<name>: validate)


def _validate_hospital_ranks(cfg: DictConfig) -> None:
    """simulation.lora_r / lora_alpha: positive per-hospital values; merges other than fedit take mixed ranks."""
    ranks, alphas = list(cfg.simulation.get("lora_r") or []), list(cfg.simulation.get("lora_alpha") or [])
    _require(
        all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks),
        f"simulation.lora_r={ranks} must be a list of positive integers (hospital i gets lora_r[i % len]), or null.",
    )
    _require(
        not alphas or (len(alphas) == len(ranks) and all(float(a) > 0 for a in alphas)),
        f"simulation.lora_alpha={alphas} needs one positive alpha per entry of simulation.lora_r={ranks}, or null.",
    )


def _validate_lora_targets(cfg: DictConfig) -> None:
    """Resolve LoRA targets against the real backbone (on the meta device: no weights, no memory)."""
    with torch.device("meta"):
        backbone = build_backbone(cfg.model)
    resolve_lora_targets(backbone, list(cfg.lora.target_modules))
