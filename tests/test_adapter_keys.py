"""Adapter keys: one reader for LoRA factors and task heads, used by every layer."""

import pytest

from fl_app.adapter_keys import (
    adapter_state,
    head_state,
    head_task,
    head_task_of,
    is_lora_key,
    lora_module,
    lora_state,
    non_lora_state,
    state_tasks,
)
from fl_app.model.classifier import HEADS_PREFIX

STATE = {
    "base_model.model.backbone.encoder.layer.0.attention.query.lora_A.weight": 1,
    "base_model.model.backbone.encoder.layer.0.attention.query.lora_B.weight": 2,
    "base_model.model.heads.breastmnist.weight": 3,
    "base_model.model.heads.breastmnist.bias": 4,
    "base_model.model.heads.pneumoniamnist.weight": 5,
}


def test_lora_keys_and_their_module():
    key = "base_model.model.backbone.encoder.layer.0.attention.query.lora_A.weight"
    assert is_lora_key(key) and lora_module(key) == "base_model.model.backbone.encoder.layer.0.attention.query"
    assert not is_lora_key("base_model.model.heads.breastmnist.weight")
    assert lora_module("base_model.model.heads.breastmnist.weight") is None


@pytest.mark.parametrize(
    ("key", "task"),
    [
        ("base_model.model.heads.breastmnist.weight", "breastmnist"),
        ("heads.pneumonia.bias", "pneumonia"),
        ("x.heads.heads.weight", "heads"),  # a task may be called "heads"
        ("base_model.model.heads.t.lora_A.weight", None),  # a LoRA key is never a head
        ("base_model.model.backbone.dense.weight", None),
        ("heads.weight", None),  # no task segment
    ],
)
def test_head_task_of(key, task):
    assert head_task_of(key) == task


def test_head_task_names_the_expected_key_forms():
    with pytest.raises(ValueError, match=r"neither a LoRA key .* nor a head key \(\.\.\.heads\.<task>\.<param>\)"):
        head_task("base_model.model.backbone.dense.weight")


def test_state_views():
    assert set(lora_state(STATE)) == {k for k in STATE if "lora_" in k}
    assert set(non_lora_state(STATE)) == {k for k in STATE if "heads." in k}
    assert set(head_state(STATE, ["breastmnist"])) == {
        "base_model.model.heads.breastmnist.weight",
        "base_model.model.heads.breastmnist.bias",
    }
    assert set(adapter_state(STATE, ["pneumoniamnist"])) == set(lora_state(STATE)) | {
        "base_model.model.heads.pneumoniamnist.weight"
    }
    assert state_tasks(STATE) == ["breastmnist", "pneumoniamnist"]


def test_the_head_segment_is_the_classifiers():
    assert HEADS_PREFIX == "heads"


def test_fl_app_model_lora_still_exports_is_lora_key():
    from fl_app.model.lora import is_lora_key as from_lora

    assert from_lora is is_lora_key
