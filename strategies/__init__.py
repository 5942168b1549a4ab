"""Flower strategies by name: how hospitals are asked to train and how their adapters combine.

- `one_shot` (strategies/one_shot.py): one round, one merge (merge math in strategies/merging/).
- `fedavg`   (strategies/fedavg.py): Flower's FedAvg over the adapters, the baseline.
- `medforge` (strategies/medforge/): MedForge-Fusion and -Mixture, progressive and one-shot.
- `centralised` (strategies/centralised.py): the pooled-data reference (simulation only).

Each declares its traits once, beside its runner, as a `StrategySpec` (strategies/spec.py); every
consumer asks `strategy_spec`. A strategy outside this package: `strategy.spec=package.module:SPEC`
in its config. Specs are imported when asked for, so `import strategies.merging` (pure torch math)
loads neither Flower's strategies nor nevergrad.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from strategies.spec import StrategySpec

# strategy name -> "module:spec"
STRATEGIES: dict[str, str] = {
    "one_shot": "strategies.one_shot:SPEC",
    "fedavg": "strategies.fedavg:SPEC",
    "medforge": "strategies.medforge.spec:SPEC",
    "centralised": "strategies.centralised:SPEC",
}


def strategy_spec(strategy: str | Mapping[str, Any]) -> StrategySpec:
    """The spec of a strategy: by name, or from its config (`name`, or `spec` = "module:attribute").

    Raises ValueError listing the choices for a name that is neither registered nor given a spec."""
    if isinstance(strategy, str):
        target, name = None, strategy
    else:  # a config mapping (dict or DictConfig)
        target, name = strategy.get("spec"), str(strategy.get("name"))
    if not target:
        if name not in STRATEGIES:
            raise ValueError(
                f"strategy={name!r} is not valid; choose one of {sorted(STRATEGIES)} "
                "(or a strategy of your own: strategy.spec=package.module:SPEC)."
            )
        target = STRATEGIES[name]
    module, _, attribute = str(target).partition(":")
    spec = getattr(importlib.import_module(module), attribute or "SPEC")
    if not isinstance(spec, StrategySpec):
        raise ValueError(f"strategy.spec={target!r} is not a StrategySpec (strategies/spec.py).")
    if spec.name != name:
        raise ValueError(f"strategy.spec={target!r} declares strategy {spec.name!r}, but strategy.name={name!r}.")
    return spec


def spec_of_results(results: Mapping[str, Any]) -> StrategySpec | None:
    """The spec of the run a results.json describes (its `strategy`, with the `spec` its config gives),
    or None when this code does not know that strategy."""
    name = results.get("strategy")
    configured = (results.get("config") or {}).get("strategy") or {}
    try:
        return strategy_spec(configured if configured.get("name") == name else str(name))
    except (ValueError, ImportError, AttributeError):
        return None
