"""Shared fixtures of the data tests: the real BreastMNIST folder and a data-config factory."""

from pathlib import Path

import pytest

from fl_app.data import clear_task_cache

# ../shared/data/medmnist relative to the project root (never copied into the repo)
REAL_ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "medmnist"


@pytest.fixture
def breast_root() -> Path:
    if not (REAL_ROOT / "breastmnist.npz").is_file():
        pytest.skip(f"real BreastMNIST file not found at {REAL_ROOT.resolve()}/breastmnist.npz")
    return REAL_ROOT.resolve()


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
