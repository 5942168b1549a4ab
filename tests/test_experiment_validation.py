"""Experiment validation (fl_app/validation.py): per-hospital LoRA ranks, the evaluation switch."""

from __future__ import annotations

import pytest

from fl_app.validation import validate_experiment


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["simulation.lora_r=[4,0]"], r"simulation.lora_r=\[4, 0\] must be a list of positive integers"),
        (["simulation.lora_r=[4,8]", "simulation.lora_alpha=[8]"], r"needs one positive alpha per entry"),
        (["simulation.lora_r=[4,8]", "strategy.merge=fedit"], r"strategy.merge=fedit averages A and B separately"),
        (
            ["strategy=fedavg", "simulation.lora_r=[4,8]", "simulation.lora_alpha=[8,8]"],
            r"FedAvg over mixed ranks zero-pads the factors \(HetLoRA\)",
        ),
    ],
)
def test_bad_hospital_ranks_are_refused_naming_the_setting(tiny_experiment, overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_experiment(tiny_experiment(*overrides))


def test_mixed_ranks_are_accepted_for_exact_merges_and_fedavg(tiny_experiment):
    validate_experiment(tiny_experiment("simulation.lora_r=[2,4,8]"))
    validate_experiment(tiny_experiment("strategy=fedavg", "simulation.lora_r=[2,4,8]"))


def test_cross_evaluation_must_be_a_boolean(tiny_experiment):
    validate_experiment(tiny_experiment("strategy.cross_evaluation=true"))

    with pytest.raises(ValueError, match=r"strategy.cross_evaluation='yes' must be true .* or false"):
        validate_experiment(tiny_experiment("strategy.cross_evaluation=yes"))
