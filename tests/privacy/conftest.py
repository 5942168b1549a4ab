"""A tiny hospital (tiny ViT, synthetic BreastMNIST-shaped data) for DP tests."""

from __future__ import annotations

import json

import pytest

from fl_app.config import hospital_payload
from fl_app.hospital_steps import simulated_hospital


@pytest.fixture
def tiny_hospital(tiny_experiment):
    """make(*overrides) -> hospital 0 of 3 with a fresh adapter, on `data=multi_center` BreastMNIST stand-ins."""

    def make(*overrides: str, hospital_id: int = 0):
        cfg = tiny_experiment("data=multi_center", "data.flags=[breastmnist]", *overrides)
        hospital = simulated_hospital(json.loads(hospital_payload(cfg)), hospital_id, 3)
        name = hospital.model.use_adapter(hospital.lora)
        hospital.model.reset_adapter(name, seed=0)
        return hospital, name

    return make
