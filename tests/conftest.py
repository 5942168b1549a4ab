"""Shared fixtures: the real BreastMNIST folder, tiny model configs, composed experiments."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_app.config import compose_experiment

REPO = Path(__file__).resolve().parents[1]
MEDMNIST_ROOT = (REPO / ".." / "shared" / "data" / "medmnist").resolve()

# Small enough for CPU tests, same code paths as the quickstart (whose backbone is EfficientNet-Lite0).
TINY_MODEL = [
    "model=tiny_vit",
    "model.preset.hidden_size=48",
    "model.preset.num_hidden_layers=2",
    "model.preset.intermediate_size=96",
    "model.preset.patch_size=7",
    "lora.r=4",
]
TINY_CAPS = ["data.max_train=64", "data.max_eval=48"]
TINY_SITE = [*TINY_MODEL, *TINY_CAPS]  # with data=site (which declares tasks, not flags)
TINY = [*TINY_SITE, "data.flags=[breastmnist,pneumoniamnist,bloodmnist]"]  # an 8-class task among the three


@pytest.fixture
def breast_root() -> Path:
    """The real BreastMNIST folder (../shared/data/medmnist); never copied into the repo."""
    if not (MEDMNIST_ROOT / "breastmnist.npz").exists():
        pytest.skip(f"real BreastMNIST not found at {MEDMNIST_ROOT}")
    return MEDMNIST_ROOT


@pytest.fixture
def tiny_experiment(tmp_path):
    """Compose the default experiment made tiny, with data under an empty root (synthetic)."""

    def make(*overrides: str):
        return compose_experiment([*TINY, f"data.root={tmp_path / 'no-medmnist'}", *overrides])

    return make
