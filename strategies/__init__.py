"""Flower strategies by name: how hospitals are asked to train and how their adapters combine.

- `one_shot` (strategies/one_shot.py): one round, one merge (merge math in strategies/merging/).
- `fedavg`   (strategies/fedavg.py): Flower's FedAvg over the adapters, the baseline.
- `medforge` (strategies/medforge/): MedForge-Fusion and -Mixture, progressive and one-shot.
- `centralised` (strategies/centralised.py): the pooled-data reference (simulation only).

Runners are imported when asked for by name, so `import strategies.merging` (pure torch math)
loads neither Flower's strategies nor nevergrad.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# strategy name -> "module:runner"
STRATEGIES: dict[str, str] = {
    "one_shot": "strategies.one_shot:run_one_shot",
    "fedavg": "strategies.fedavg:run_fedavg",
    "medforge": "strategies.medforge.runner:run_medforge",
    "centralised": "strategies.centralised:run_centralised",
}


def get_strategy(name: str) -> Callable[..., Any]:
    """The runner of strategy `name` (imported now), or a ValueError listing the choices."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is not valid; choose one of {sorted(STRATEGIES)}.")
    module, _, runner = STRATEGIES[name].partition(":")
    return getattr(importlib.import_module(module), runner)
