"""What to re-merge: registered methods (read at call time), their parameters, weighting and names."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from strategies.merging import MERGE_METHODS, WEIGHTINGS, get_merge_method

NAME_PREFIX = "remerge-"


@dataclass(frozen=True)
class MergeRequest:
    """One new version: merge `method` with `params` (explicit ones; the rest take the method's defaults)."""

    method: str
    params: dict[str, Any]
    weighting: str
    scale: float
    rank: int | None
    name: str
    label: str  # how reports name it: the method and every setting that differs from the run's merge
    weights: dict[str, float] | None = None  # with weighting `explicit`: {hospital id: weight}


def registered_methods() -> str:
    """One entry per registered merge method (read now): name, parameters with defaults, description."""
    lines = []
    for name, method in sorted(MERGE_METHODS.items()):
        params = ", ".join(f"{k}={v}" for k, v in method.params.items()) or "no parameters"
        lines.append(f"{name:22s} {params}\n{'':22s} {method.description}")
    return "\n".join(lines)


def parse_params(items: Sequence[str]) -> list[tuple[str | None, str, Any]]:
    """`key=value` (for every selected method that declares key) or `method.key=value`; values as YAML scalars."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"--param {item!r} is not key=value; write e.g. --param density=0.5 or --param ties.density=0.5."
            )
        method, _, name = key.rpartition(".")
        parsed.append((method or None, name, yaml.safe_load(raw)))
    return parsed


def parse_weights(items: Sequence[str]) -> dict[str, float] | None:
    """`ID=W` items (--weight) as {hospital id: weight}; None when there are none."""
    weights = {}
    for item in items:
        hospital, sep, raw = item.partition("=")
        try:
            weights[str(int(hospital))] = float(raw)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--weight {item!r} is not ID=W; write e.g. --weight 0=0.7 --weight 1=0.3.")
    return weights or None


def _method_params(methods: Sequence[str], params: Sequence[tuple[str | None, str, Any]]) -> dict[str, dict[str, Any]]:
    """Explicit parameters per method, each checked against what the method declares."""
    chosen: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for method, key, value in params:
        targets = [method] if method else [m for m in methods if key in MERGE_METHODS[m].params]
        if method and method not in chosen:
            raise ValueError(f"--param {method}.{key}: {method!r} is not among the selected methods {list(methods)}.")
        declared = {m: sorted(MERGE_METHODS[m].params) for m in (targets or methods)}
        if not targets or any(key not in MERGE_METHODS[m].params for m in targets):
            raise ValueError(
                f"--param {key}={value!r}: no selected method declares {key!r}; their parameters: {declared}."
            )
        for m in targets:
            chosen[m][key] = value
    return chosen


def _weights_by_id(weights: Mapping[int | str, float] | None) -> dict[str, float] | None:
    """Explicit weights keyed by hospital id as a string (config keys may be ints), or None."""
    return None if not weights else {str(k): float(v) for k, v in weights.items()}


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", str(value))


def plan_requests(
    methods: Sequence[str],
    params: Sequence[tuple[str | None, str, Any]],
    run_strategy: Mapping[str, Any],
    *,
    weighting: str | None = None,
    scale: float | None = None,
    rank: int | None = None,
    name: str | None = None,
    weights: Mapping[int | str, float] | None = None,
) -> list[MergeRequest]:
    """One request per method; settings not given are the run's own (`strategy.weighting`, `weights`, `scale`, `merge_rank`)."""
    if not methods:
        raise ValueError(f"no merge method given; choose from {sorted(MERGE_METHODS)}.")
    for method in methods:
        get_merge_method(method)  # unknown -> ValueError listing the registered methods
    if len(set(methods)) != len(methods):
        raise ValueError(f"--merge lists a method twice: {list(methods)}.")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*", name):
        raise ValueError(
            f"--name={name!r} is not a valid version name: use letters, digits and _ . = + - (it becomes adapters/<name>/)."
        )
    if name is not None and len(methods) > 1:
        raise ValueError(
            f"--name names one version, but {len(methods)} methods were given; drop --name to get remerge-<method> names."
        )
    if weighting is not None and weighting not in WEIGHTINGS:
        raise ValueError(f"--weighting={weighting!r} is not valid; choose one of {WEIGHTINGS}.")
    if rank is not None and rank < 1:
        raise ValueError(f"--merge-rank={rank} must be a positive integer (omit it for a lossless merge).")
    run_settings = {
        "weighting": run_strategy.get("weighting", "num_examples"),
        "weights": _weights_by_id(run_strategy.get("weights")),
        "scale": float(run_strategy.get("scale", 1.0)),
        "merge_rank": run_strategy.get("merge_rank"),
    }
    given = {"weighting": weighting, "weights": _weights_by_id(weights), "scale": scale, "merge_rank": rank}
    settings = {k: (v if v is not None else run_settings[k]) for k, v in given.items()}
    if settings["weighting"] == "explicit" and not settings["weights"]:
        raise ValueError(
            "--weighting explicit needs a weight per hospital: pass --weight ID=W for each hospital (the run has no strategy.weights)."
        )
    if settings["weighting"] != "explicit":
        settings["weights"] = run_settings["weights"] = None  # weights apply only to explicit weighting
    changed = {k: v for k, v in settings.items() if v != run_settings[k]}
    requests = []
    for method, explicit in _method_params(methods, params).items():
        shown = explicit | changed
        label = method + (f" ({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")
        default_name = NAME_PREFIX + "-".join([method, *(f"{_slug(k)}={_slug(v)}" for k, v in shown.items())])
        requests.append(
            MergeRequest(
                method,
                explicit,
                str(settings["weighting"]),
                float(settings["scale"]),
                settings["merge_rank"],
                name or default_name,
                label,
                settings["weights"],
            )
        )
    return requests
