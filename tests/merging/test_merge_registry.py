"""Merge method registry."""

import pathlib

import pytest
import torch

import strategies.merging as merging
from strategies.merging import MERGE_METHODS, get_merge_method, merge_adapters, task_arithmetic


def test_task_arithmetic_is_registered():
    # Execute
    method = get_merge_method("task_arithmetic")

    # Assert
    assert method.fn is task_arithmetic
    assert method.exact and method.paper == "https://arxiv.org/abs/2212.04089"


def test_registry_keys_are_method_names():
    assert all(name == method.name for name, method in MERGE_METHODS.items())


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match=r"unknown merge method 'ties'; choose one of \['task_arithmetic'\]"):
        get_merge_method("ties")


def test_merge_adapters_resolves_method_names():
    # Prepare
    state = {"m.lora_A.weight": torch.ones(1, 3), "m.lora_B.weight": torch.ones(2, 1)}

    # Execute
    merged = merge_adapters([state], [2.0], [1.0], ["t"], method="task_arithmetic")

    # Assert
    delta = merged.state["m.lora_B.weight"] @ merged.state["m.lora_A.weight"]
    torch.testing.assert_close(delta, torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match=r"unknown merge method 'dare'; choose one of \['task_arithmetic'\]"):
        merge_adapters([state], [2.0], [1.0], ["t"], method="dare")


def test_package_has_no_flower_imports():
    sources = pathlib.Path(merging.__file__).parent.glob("*.py")
    assert not [p.name for p in sources if "flwr" in p.read_text()]
