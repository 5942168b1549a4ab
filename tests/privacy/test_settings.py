"""Privacy settings fail fast, before any simulation, naming the key and the fix."""

from __future__ import annotations

import pytest

from fl_app.privacy.settings import privacy_settings
from fl_app.validation import validate_experiment

DP = ["privacy=dp"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.noise_multiplier=1.0"], "exactly one of epsilon"),
        (["privacy.epsilon=null"], "exactly one of epsilon"),
        (["privacy.epsilon=0"], r"privacy.epsilon=0.0 must be a finite number > 0"),
        (["privacy.epsilon=inf"], r"no privacy at all: privacy=none"),
        (["privacy.max_grad_norm=0"], "privacy.max_grad_norm=0.0 must be"),
        (["privacy.delta=1.5"], r"privacy.delta=1.5 must be in \(0, 1\)"),
        (
            ["privacy.simulation.seeded_noise=sometimes"],
            "privacy.simulation.seeded_noise='sometimes' must be true or false",
        ),
        (["train.early_stopping=true"], "train.early_stopping=true picks the epoch on the hospital's validation"),
        (["train.class_weighting=balanced"], "train.class_weighting='balanced' weights the loss"),
        (["strategy=centralised"], "strategy=centralised pools every hospital's images"),
        (["strategy=medforge"], "privacy.distill.enabled=false: the calibration set would be distilled"),
        (
            ["strategy=medforge", "privacy.distill.enabled=true", "privacy.distill.noise_multiplier=1"],
            "privacy.distill: set exactly one",
        ),
        (
            ["strategy=medforge", "privacy.distill.enabled=true", "privacy.distill.sample_rate=0"],
            "sample_rate=0.0 must be in",
        ),
    ],
)
def test_a_privacy_setting_that_cannot_be_honoured_is_refused(tiny_experiment, overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_experiment(tiny_experiment(*DP, *overrides))


def test_secure_aggregation_is_refused_with_the_flower_reference(tiny_experiment):
    with pytest.raises(ValueError, match=r"SecAgg\+ only through its legacy API.*flower.ai/docs"):
        validate_experiment(tiny_experiment("privacy.secagg=true"))


def test_the_dp_preset_validates_for_one_shot_fedavg_and_private_medforge(tiny_experiment):
    validate_experiment(tiny_experiment(*DP))
    validate_experiment(tiny_experiment(*DP, "strategy=fedavg", "strategy.rounds=3"))
    validate_experiment(tiny_experiment(*DP, "strategy=medforge", "privacy.distill.enabled=true"))


def test_without_privacy_nothing_changes(tiny_experiment):
    cfg = tiny_experiment()

    assert not privacy_settings(cfg.privacy).enabled
    assert cfg.train.early_stopping and cfg.train.class_weighting == "balanced"
    assert not privacy_settings(None).enabled  # a run made before the section existed


def test_the_dp_preset_switches_off_what_the_accountant_does_not_cover(tiny_experiment):
    cfg = tiny_experiment(*DP)
    settings = privacy_settings(cfg.privacy)

    assert settings.enabled and settings.target.epsilon == 8.0 and settings.delta_for(500) == pytest.approx(2e-4)
    assert not cfg.train.early_stopping and cfg.train.class_weighting == "none"
