"""Release (fl_app/forge/release.py): the folder loads with PeftModel.from_pretrained and predicts like the version."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors.torch import load_file

from fl_app.forge.release import MODEL_FILE, release
from fl_app.model.backbone import build_backbone
from fl_app.model.classifier import MedForgeClassifier
from fl_app.model.lora import HospitalModel


def test_release_loads_with_peft_and_predicts_like_the_version(tiny_run, tmp_path):
    # Prepare
    folder = release(tiny_run, "merged", tmp_path / "release")
    cfg = OmegaConf.load(folder / MODEL_FILE)
    entry = next(v for v in json.loads((tiny_run / "results.json").read_text())["versions"] if v["name"] == "merged")
    experiment = OmegaConf.load(tiny_run / "config.yaml")
    images = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))

    # Execute: the user's way, and the run's own hospital model with the version's tensors
    model = PeftModel.from_pretrained(
        MedForgeClassifier(build_backbone(cfg.model), dict(cfg.task_outputs)), str(folder)
    )
    reference = HospitalModel(OmegaConf.to_container(experiment.model), dict(cfg.task_outputs))
    name = reference.use_adapter(experiment.lora, rank=entry["r"], alpha=entry["lora_alpha"])
    reference.load_adapter_state(
        name, load_file(tiny_run / "adapters" / "merged" / "adapter_model.safetensors"), "breastmnist"
    )

    # Assert
    with torch.no_grad():
        got = model.eval()(images, task="breastmnist")
        want = reference.peft.eval()(images, task="breastmnist")
    torch.testing.assert_close(got, want)
    assert not torch.allclose(
        want, MedForgeClassifier(build_backbone(cfg.model), dict(cfg.task_outputs)).eval()(images, task="breastmnist")
    )


def test_the_model_card_follows_hugging_face_conventions(tiny_run, tmp_path):
    card = (release(tiny_run, "merged", tmp_path / "release") / "README.md").read_text()

    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0" and meta["base_model"] == "tiny_vit"
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "breastmnist"
    for section in (
        "Model details",
        "Tasks and classes",
        "Contributors",
        "Evaluation",
        "Privacy",
        "Licence",
        "Intended use",
        "Limitations",
        "How to load",
    ):
        assert f"## {section}" in body
    assert "Data source: **synthetic**" in body and "| 0 | breastmnist |" in body


def test_release_never_overwrites_without_force(tiny_run, tmp_path):
    release(tiny_run, "merged", tmp_path / "release")

    with pytest.raises(ValueError, match="exists; choose another --to or pass --force"):
        release(tiny_run, "merged", tmp_path / "release")
    release(tiny_run, "hospital-0", tmp_path / "release", force=True)
