"""Flower strategies by name: how hospitals are asked to train and how their adapters combine.

- `one_shot` (strategies/one_shot.py): one round, one merge (merge math in strategies/merging/).
- `fedavg`   (strategies/fedavg.py): Flower's FedAvg over the adapters, the baseline.
- `medforge` (strategies/medforge/): MedForge-Fusion and -Mixture, progressive and one-shot.
- `centralised` (strategies/centralised.py): the pooled-data reference (simulation only).
"""

from strategies.centralised import run_centralised
from strategies.fedavg import run_fedavg
from strategies.medforge import run_medforge
from strategies.one_shot import run_one_shot

STRATEGIES = {
    "one_shot": run_one_shot,
    "fedavg": run_fedavg,
    "medforge": run_medforge,
    "centralised": run_centralised,
}


def get_strategy(name: str):
    """The runner of strategy `name`, or a ValueError listing the choices."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is not valid; choose one of {sorted(STRATEGIES)}.")
    return STRATEGIES[name]
