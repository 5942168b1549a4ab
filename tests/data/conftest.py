"""Shared fixtures of the data tests: a data-config factory (the real BreastMNIST folder is in tests/conftest.py)."""

import pytest

from fl_app.data import clear_task_cache

@pytest.fixture
def data_cfg(tmp_path):
    """Factory: a complete data config, offline, pointing at an empty folder unless overridden."""

    def make(**overrides):
        cfg = {
            "scenario": "multi_center",
            "flags": ["breastmnist"],
            "size": 28,
            "root": str(tmp_path),
            "download": False,
            "synthetic_fallback": True,
            "partition": "iid",
            "dirichlet_alpha": 0.5,
            "min_samples_per_hospital": 10,
            "max_train": None,
            "max_eval": None,
        }
        cfg.update(overrides)
        return cfg

    return make


@pytest.fixture(autouse=True)
def fresh_task_cache():
    """Each test loads tasks itself (the cache is per process and would hide log lines)."""
    clear_task_cache()
    yield
    clear_task_cache()
