"""Named defences: each is a `strategy` setting (screen, robust, merge) a run could use, so the table's
rows are configurations a user can copy (`strategy.screen.*`, `strategy.robust.*`, `strategy.merge`)."""

from __future__ import annotations

from typing import Any

OFF = {
    "max_update_ratio": 1e12,
    "max_head_ratio": 1e12,
    "norm_factor": 1e12,
    "min_cosine": None,
    "min_relative_cosine": None,
    "clip_factor": None,
    "duplicate_tolerance": None,
    "max_merged_ratio": 1e30,
}
DEFAULT_SCREEN = {
    "max_update_ratio": 1.0,
    "max_head_ratio": 100.0,
    "norm_factor": 10.0,
    "min_cosine": 0.0,
    "min_relative_cosine": 0.5,
    "clip_factor": 2.0,
    "duplicate_tolerance": 1e-3,
    "max_merged_ratio": 10.0,
}

# name -> (screen, robust, merge method overriding the table's method or None, what it is)
DEFENCES: dict[str, tuple[dict[str, Any], dict[str, Any], str | None, str]] = {
    "none": (OFF, {"max_share": None}, None, "no screen, no cap: the merge takes what it is sent"),
    "norm_reject": (
        {**OFF, "norm_factor": 10.0},
        {"max_share": None},
        None,
        "reject a ΔW norm > 10x its task's median (the screen before this change, per task)",
    ),
    "clip": ({**OFF, "clip_factor": 2.0}, {"max_share": None}, None, "clip ΔW norms to 2x the task's median"),
    "direction": (
        {**OFF, "min_cosine": 0.0, "min_relative_cosine": 0.5},
        {"max_share": None},
        None,
        "reject a ΔW whose cosine to the task's median direction is <= 0 or < 0.5 x the task's median cosine",
    ),
    "default": (
        DEFAULT_SCREEN,
        {"max_share": 0.5},
        None,
        "the project's defaults: absolute bounds, norm reject 10x, direction, clip 2x, weight cap 1/2",
    ),
    "median": (OFF, {"max_share": None}, "median", "coordinate-wise median of ΔW (Yin et al. 2018), no screen"),
    "trimmed_mean": (
        OFF,
        {"max_share": None},
        "trimmed_mean",
        "trimmed mean of ΔW, trim 0.2 (Yin et al. 2018), no screen",
    ),
}


def defence_strategy(name: str, method: str, base: dict[str, Any]) -> dict[str, Any]:
    """The `strategy` mapping of a run using defence `name` with merge `method` (other settings from `base`)."""
    if name not in DEFENCES:
        raise ValueError(f"unknown defence {name!r}; choose from {sorted(DEFENCES)}")
    screen, robust, merge, _ = DEFENCES[name]
    overridden = merge is not None
    return {
        **base,
        "screen": dict(screen),
        "robust": dict(robust),
        "merge": merge if overridden else method,
        "merge_params": None if overridden else base.get("merge_params"),
    }
