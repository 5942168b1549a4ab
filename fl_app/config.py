"""The experiment configuration: composed with Hydra, validated before any simulation starts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fl_app.data.worker_cache import DEFAULT_DATA_CACHE
from strategies import strategy_spec

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# `flwr run . --run-config` knobs -> Hydra override keys. Empty string / 0 / -1 = keep conf/.
RUN_CONFIG_KNOBS: dict[str, str] = {
    "strategy": "strategy",
    "data": "data",
    "model": "model",
    "rounds": "strategy.rounds",
    "local-epochs": "train.local_epochs",
    "lora-r": "lora.r",
    "seed": "seed",
    "data-root": "data.root",
}
UNSET = ("", 0, -1)

# The parts of the experiment every hospital needs, sent in each instruction message.
HOSPITAL_KEYS = ("seed", "data", "model", "lora", "train", "eval")


def compose_experiment(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/config.yaml with Hydra overrides, as `scripts/run.py` would (no command line)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return experiment_only(cfg)


def experiment_only(cfg: DictConfig) -> DictConfig:
    """The resolved experiment without Hydra's own `hydra` node."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return OmegaConf.create(container)


def run_config_overrides(run_config: Mapping[str, Any]) -> list[str]:
    """Hydra overrides from a Flower run config (`flwr run . --run-config ...`)."""
    overrides = [
        f"{target}={run_config[knob]}"
        for knob, target in RUN_CONFIG_KNOBS.items()
        if knob in run_config and run_config[knob] not in UNSET
    ]
    extra = str(run_config.get("overrides", "")).split()
    return overrides + extra


def experiment_from_run_config(run_config: Mapping[str, Any]) -> DictConfig:
    """The experiment a ServerApp runs: the resolved file `scripts/run.py` wrote, or conf/ + knobs."""
    config_path = str(run_config.get("config-path", ""))
    if config_path:
        return OmegaConf.load(config_path)
    return compose_experiment(run_config_overrides(run_config))


def config_digest(path: str | Path) -> str:
    """SHA-256 of a resolved experiment file: what `validated` in the run config refers to."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def validated_before(run_config: Mapping[str, Any]) -> bool:
    """Whether `scripts/run.py` already validated this very file (`validated` = its digest), so the
    ServerApp need not import the backbone, PEFT and the training code again to check it."""
    return is_validated(str(run_config.get("config-path", "")), str(run_config.get("validated", "")))


def is_validated(config_path: str | Path, digest: str) -> bool:
    """Whether `digest` is the SHA-256 of `config_path` as it is now (a file edited since fails)."""
    if not str(config_path) or not digest:
        return False
    try:
        return config_digest(config_path) == digest
    except OSError:
        return False


def hospital_payload(cfg: DictConfig, job: str = "") -> str:
    """JSON of what hospitals need to train and evaluate (never anything secret).

    job: the sweep job's name when several experiments share one Flower run (keys per-job state at
    the hospital, e.g. its DP ledger); empty for a run of its own."""
    container = OmegaConf.to_container(cfg, resolve=True)
    payload = {key: container[key] for key in HOSPITAL_KEYS}
    payload["job"] = job
    # Rehearsals of faults (simulation.*): raise, die mid-round, reply late.
    payload["fail_hospitals"] = list(container["simulation"].get("fail_hospitals") or [])
    payload["crash_hospitals"] = list(container["simulation"].get("crash_hospitals") or [])
    payload["slow_hospitals"] = {
        str(k): float(v) for k, v in (container["simulation"].get("slow_hospitals") or {}).items()
    }
    payload["data_cache_size"] = int(container["simulation"].get("data_cache_size", DEFAULT_DATA_CACHE))
    # hospitals of different capacity: a LoRA rank (and alpha) per hospital, hospital i -> [i % len]
    payload["lora_ranks"] = list(container["simulation"].get("lora_r") or [])
    payload["lora_alphas"] = list(container["simulation"].get("lora_alpha") or [])
    # differential privacy at the hospital; a target ε covers every round the hospital will be asked for
    payload["privacy"] = dict(container.get("privacy") or {"enabled": False})
    payload["privacy_rounds"] = strategy_spec(container["strategy"]).training_rounds(container["strategy"])
    return json.dumps(payload, sort_keys=True)


def save_experiment(cfg: DictConfig, path: Path) -> Path:
    """Write the resolved experiment YAML (what `config-path` points the ServerApp at)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
    return path
