"""MedForge's traits (strategies/spec.py): one round, its own settings' checks; the runner loads on use."""

from __future__ import annotations

from omegaconf import DictConfig

from fl_app.data import experiment_tasks
from fl_app.privacy.settings import privacy_settings, refuse_plain_calibration
from strategies.medforge.settings import validate_medforge
from strategies.screening import screen_settings
from strategies.spec import StrategySpec


def validate(cfg: DictConfig) -> None:
    """The screen's bounds, MedForge's settings, and no calibration set distilled without DP when privacy is on."""
    screen_settings(cfg.strategy)  # bad bounds fail here, naming the setting
    validate_medforge(cfg.strategy, list(experiment_tasks(cfg.data).values()), int(cfg.seed))
    refuse_plain_calibration(privacy_settings(cfg.get("privacy")))  # the hospitals would refuse too


# Progressive merges need the calibration sets, which are never stored: not rebuilt from adapters
# (no resume, no benchmark floor); data-free merges in its runs are baselines beside it.
SPEC = StrategySpec(
    name="medforge",
    runner="strategies.medforge.runner:run_medforge",
    merge=lambda strategy: "medforge",
    validate=validate,
    report_baselines=True,
)
