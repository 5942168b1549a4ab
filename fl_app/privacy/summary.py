"""results.json `privacy`: each hospital's accountant as it reported it, and the server's re-check.

The numbers are the hospital's claims (untrusted like everything it sends). The server recomputes
the training ε from the reported (σ, q, steps) with the same accountant: a hospital whose claimed ε
does not follow from its own noise settings is flagged `consistent: false`. Whether noise was really
added cannot be checked from the adapter; that trust stays with the hospital.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fl_app.privacy.accounting import EPSILON_TOLERANCE, epsilon_spent

FIELDS = {
    "dp-epsilon": "epsilon",
    "dp-epsilon-train": "epsilon_train",
    "dp-epsilon-distill": "epsilon_distill",
    "dp-delta": "delta",
    "dp-noise-multiplier": "noise_multiplier",
    "dp-sample-rate": "sample_rate",
    "dp-max-grad-norm": "max_grad_norm",
    "dp-steps": "steps",
    "dp-releases": "releases",
}


def hospital_privacy(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """One hospital's accountant from its latest train reply, checked; None when it reported none."""
    if "dp-epsilon" not in metrics:
        return None
    entry = {name: metrics[key] for key, name in FIELDS.items() if key in metrics}
    try:
        recomputed = epsilon_spent(
            [(float(entry["noise_multiplier"]), float(entry["sample_rate"]), int(entry["steps"]))],
            float(entry["delta"]),
        )
    except (KeyError, TypeError, ValueError):
        recomputed = math.nan
    entry["epsilon_train_recomputed"] = recomputed
    claimed = float(entry.get("epsilon_train", math.nan))
    entry["consistent"] = bool(math.isfinite(recomputed) and abs(recomputed - claimed) <= 2 * EPSILON_TOLERANCE)
    return entry


def privacy_summary(
    train_metrics: Mapping[str, Mapping[str, Mapping[str, Any]]], config: Mapping[str, Any] | None
) -> dict[str, Any]:
    """results.json `privacy` from every round's train metrics ({round: {hospital: metrics}})."""
    latest: dict[str, Mapping[str, Any]] = {}
    for round_number in sorted(train_metrics, key=int):
        latest.update(train_metrics[round_number])
    per_hospital = {
        h: entry for h, m in sorted(latest.items(), key=lambda kv: int(kv[0])) if (entry := hospital_privacy(m))
    }
    epsilons = [float(e["epsilon"]) for e in per_hospital.values() if e.get("epsilon") is not None]
    return {
        "enabled": bool((config or {}).get("enabled", False)),
        "target_epsilon": (config or {}).get("epsilon"),
        "per_hospital": per_hospital,
        "max_epsilon": max(epsilons) if epsilons else None,
        "all_consistent": all(e["consistent"] for e in per_hospital.values()),
    }
