"""The `strategy=medforge` settings, checked before Flower starts."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from fl_app.calibration import DistillSettings
from fl_app.calibration.distill import INITS
from fl_app.data import TaskInfo
from strategies.medforge.federated import FederatedSettings
from strategies.medforge.fusion import FORMS, LEVELS
from strategies.medforge.search import SEQUENTIAL_ONLY, SearchSettings
from strategies.merging import MERGE_METHODS

ORDERS = ("arrival", "configured", "random")
METHODS = ("fusion", "mixture")


def federated_settings(strategy: DictConfig) -> FederatedSettings:
    """`strategy.federated`: the federated search's settings (share must be chosen)."""
    return FederatedSettings(**OmegaConf.to_container(strategy.federated, resolve=True))


def search_settings(strategy: DictConfig, seed: int) -> SearchSettings:
    """The search settings; `search.seed: null` takes the experiment seed."""
    search = OmegaConf.to_container(strategy.search, resolve=True)
    return SearchSettings(**{**search, "seed": seed if search.get("seed") is None else int(search["seed"])})


def validate_medforge(strategy: DictConfig, tasks: Sequence[TaskInfo], seed: int) -> None:
    """Raise ValueError naming the first invalid medforge setting and the fix."""
    methods = list(strategy.methods or [])
    if not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"strategy.methods={methods} is not valid; choose a non-empty list from {list(METHODS)}.")
    if not (strategy.progressive or strategy.one_shot):
        raise ValueError(
            "strategy.progressive and strategy.one_shot are both false: nothing to merge; set one to true."
        )
    if strategy.order not in ORDERS:
        raise ValueError(f"strategy.order={strategy.order!r} is not valid; choose one of {ORDERS}.")
    if strategy.order == "configured" and not strategy.arrival_order:
        raise ValueError("strategy.order=configured needs strategy.arrival_order=[hospital ids], e.g. [2,0,1].")
    if strategy.level not in LEVELS:
        raise ValueError(f"strategy.level={strategy.level!r} is not valid; choose one of {LEVELS}.")
    if strategy.form not in FORMS:
        raise ValueError(f"strategy.form={strategy.form!r} is not valid; choose one of {FORMS}.")
    unknown = [b for b in strategy.baselines or [] if b not in MERGE_METHODS]
    if unknown:
        raise ValueError(
            f"strategy.baselines has unknown merge method(s) {unknown}; choose from {sorted(MERGE_METHODS)}."
        )
    multi_label = [task.name for task in tasks if task.multi_label]
    if multi_label:
        raise ValueError(
            f"strategy=medforge distils calibration sets by class; task(s) {multi_label} are multi-label. Use strategy=one_shot for them."
        )
    calibration = OmegaConf.to_container(strategy.calibration, resolve=True)
    try:
        settings = DistillSettings(**calibration)
    except TypeError as error:
        raise ValueError(
            f"strategy.calibration: {error}; the keys are {list(DistillSettings.__dataclass_fields__)}."
        ) from error
    if settings.init not in INITS:
        raise ValueError(f"strategy.calibration.init={settings.init!r} is not valid; choose one of {INITS}.")
    if settings.ipc < 1 or settings.iterations < 0 or settings.lr <= 0 or settings.batch_real < 1:
        raise ValueError(
            f"strategy.calibration needs ipc >= 1, iterations >= 0, lr > 0, batch_real >= 1; got {calibration}."
        )
    try:
        search = search_settings(strategy, seed)
    except TypeError as error:
        raise ValueError(
            f"strategy.search: {error}; the keys are {list(SearchSettings.__dataclass_fields__)}."
        ) from error
    if search.geometry != "box" and strategy.level != "whole":
        raise ValueError(
            f"strategy.search.geometry={search.geometry} constrains one coefficient per adapter; it needs strategy.level=whole (got {strategy.level})."
        )
    if search.source == "federated":
        if strategy.progressive:
            raise ValueError(
                "strategy.search.source=federated scores the one-shot merge at the hospitals after every adapter "
                "arrived; progressive versions need calibration sets. Set strategy.progressive=false (or source=calibration)."
            )
        try:
            federated = federated_settings(strategy)
        except TypeError as error:
            raise ValueError(
                f"strategy.federated: {error}; the keys are {list(FederatedSettings.__dataclass_fields__)}."
            ) from error
        if federated.candidates_per_round > 1 and search.optimizer in SEQUENTIAL_ONLY:
            raise ValueError(
                f"strategy.search.optimizer={search.optimizer} cannot score {federated.candidates_per_round} candidates "
                "per round (nevergrad 1.0's metamodel breaks on NumPy 2); set strategy.search.optimizer=CMA "
                "or strategy.federated.candidates_per_round=1."
            )
        if "mixture" in methods and strategy.federated.share != "adapters":
            raise ValueError(
                "strategy.methods has mixture, whose components are the hospitals' own adapters: a federated "
                "search of it needs strategy.federated.share=adapters (or methods=[fusion])."
            )
