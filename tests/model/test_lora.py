"""LoRA attachment, target resolution, adapter round trips (ArrayRecord, PEFT folder)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import ViTConfig, ViTModel

from fl_app.model import (
    MedForgeClassifier,
    arrayrecord_to_state,
    build_backbone,
    resolve_lora_targets,
    save_adapter,
    state_to_arrayrecord,
)
from fl_app.model.lora import HospitalModel, is_lora_key, linear_module_names, lora_config

MODEL = {
    "source": "preset",
    "pretrained": None,
    "image_size": 28,
    "init_seed": 0,
    "preset": {
        "architecture": "vit",
        "patch_size": 7,
        "hidden_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "intermediate_size": 96,
    },
}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}
TASKS = {"breastmnist": 2, "bloodmnist": 8}


def test_preset_backbone_is_identical_in_every_process_and_frozen():
    first, second = build_backbone(MODEL), build_backbone(MODEL)

    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not any(p.requires_grad for p in first.parameters())


def test_targets_resolve_4x_names_to_transformers_5_names():
    backbone = build_backbone(MODEL)

    assert resolve_lora_targets(backbone, ["query", "value"]) == ["q_proj", "v_proj"]
    assert resolve_lora_targets(backbone, ["q_proj", "fc1"]) == ["fc1", "q_proj"]


def test_unknown_target_names_the_choices():
    with pytest.raises(ValueError, match=r"lora.target_modules entry 'attn_nope'.*q_proj"):
        resolve_lora_targets(build_backbone(MODEL), ["attn_nope"])


def test_non_positive_rank_is_rejected():
    with pytest.raises(ValueError, match="lora.r=0"):
        lora_config(linear_module_names(build_backbone(MODEL)), {**LORA, "r": 0}, ["breastmnist"])


def test_hospital_adapter_holds_lora_and_only_its_own_head():
    model = HospitalModel(MODEL, TASKS)
    name = model.use_adapter(LORA)
    model.reset_adapter(name, seed=0)

    state = model.adapter_state(name, ["breastmnist"])

    assert any(is_lora_key(k) for k in state)
    assert {k for k in state if not is_lora_key(k)} == {
        "base_model.model.heads.breastmnist.weight",
        "base_model.model.heads.breastmnist.bias",
    }
    assert not any("backbone" in k and not is_lora_key(k) for k in state)  # the backbone is never sent


def test_reset_is_reproducible_and_b_starts_at_zero():
    model = HospitalModel(MODEL, TASKS)
    name = model.use_adapter(LORA)
    model.reset_adapter(name, seed=3)
    first = model.adapter_state(name, ["breastmnist"])
    model.reset_adapter(name, seed=3)
    second = model.adapter_state(name, ["breastmnist"])

    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.count_nonzero(v) == 0 for k, v in first.items() if ".lora_B." in k)


def test_arrayrecord_round_trip_and_strict_load():
    model = HospitalModel(MODEL, TASKS)
    name = model.use_adapter(LORA)
    model.reset_adapter(name, seed=1)
    state = {k: v + torch.randn_like(v) for k, v in model.adapter_state(name, ["bloodmnist"]).items()}

    restored = arrayrecord_to_state(state_to_arrayrecord(state))
    model.reset_adapter(name, seed=2)
    model.load_adapter_state(name, restored, "bloodmnist")

    assert all(torch.equal(restored[k], state[k]) for k in state)
    assert all(torch.equal(model.adapter_state(name, ["bloodmnist"])[k], state[k]) for k in state)
    missing = dict(restored)
    missing.pop(next(k for k in missing if is_lora_key(k)))
    with pytest.raises(ValueError, match="missing"):
        model.load_adapter_state(name, missing, "bloodmnist")
    with pytest.raises(ValueError, match="missing"):
        model.load_adapter_state(name, restored, "breastmnist")  # no head for that task


def test_saved_adapter_loads_with_peft_from_pretrained(tmp_path):
    model = HospitalModel(MODEL, TASKS)
    name = model.use_adapter(LORA)
    model.reset_adapter(name, seed=1)
    state = {k: v + 0.1 * torch.randn_like(v) for k, v in model.adapter_state(name, list(TASKS)).items()}
    config = lora_config(model.linear_names, LORA, list(TASKS))

    save_adapter(tmp_path / "adapter", state, config)
    loaded = PeftModel.from_pretrained(MedForgeClassifier(build_backbone(MODEL), TASKS), tmp_path / "adapter")

    reloaded = get_peft_model_state_dict(loaded)
    assert set(reloaded) == set(state)
    assert all(torch.equal(reloaded[k], state[k]) for k in state)
    logits = loaded(pixel_values=torch.zeros(2, 3, 28, 28), task="bloodmnist")
    assert logits.shape == (2, 8)


def test_pretrained_path_loads_through_from_pretrained(tmp_path):
    saved = ViTModel(
        ViTConfig(
            image_size=28,
            patch_size=7,
            hidden_size=48,
            num_hidden_layers=1,
            num_attention_heads=3,
            intermediate_size=96,
        ),
        add_pooling_layer=False,
    )
    saved.save_pretrained(tmp_path / "vit")

    backbone = build_backbone({"source": "pretrained", "pretrained": str(tmp_path / "vit"), "image_size": 28})

    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), backbone.state_dict().values()))
    assert resolve_lora_targets(backbone, ["query"]) == ["q_proj"]


def test_missing_pretrained_path_fails_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="model.pretrained"):
        build_backbone({"source": "pretrained", "pretrained": str(tmp_path / "nothing-here"), "image_size": 28})
