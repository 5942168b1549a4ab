"""diff (fl_app/forge/diff.py): ΔW change and cosine from the factors equal the dense computation."""

from __future__ import annotations

import pytest
import torch

from fl_app.forge.diff import delta_changes, metric_changes
from tests.forge.conftest import hospital_state


def test_relative_change_and_cosine_match_the_dense_delta_w():
    first, second = hospital_state(1, "a", 2), hospital_state(2, "a", 3)

    changes = delta_changes(first, 2.0, second, 0.5)

    for module in ("m.linear", "m.pw", "m.conv"):
        a = 2.0 * first[f"{module}.lora_B.weight"].flatten(1) @ first[f"{module}.lora_A.weight"].flatten(1)
        b = 0.5 * second[f"{module}.lora_B.weight"].flatten(1) @ second[f"{module}.lora_A.weight"].flatten(1)
        change = changes[module]
        assert change.relative_change == pytest.approx(
            (torch.linalg.norm(b - a) / torch.linalg.norm(a)).item(), rel=1e-5
        )
        assert change.cosine == pytest.approx(
            (a * b).sum().item() / (torch.linalg.norm(a) * torch.linalg.norm(b)).item(), rel=1e-4, abs=1e-6
        )
    assert delta_changes(first, 1.0, first, 1.0)["m.pw"].relative_change == pytest.approx(0.0, abs=1e-6)


def test_metric_changes_per_task():
    first = {"per_task": {"a": {"acc": 0.5, "auc": 0.6}}}
    second = {"per_task": {"a": {"acc": 0.7, "auc": None}, "b": {"acc": 0.9, "auc": 0.9}}}

    changes = metric_changes(first, second)

    assert changes["a"]["acc_change"] == pytest.approx(0.2) and changes["a"]["auc_change"] is None
    assert changes["b"]["acc_first"] is None
