"""The FedAvg baseline (strategies/fedavg.py): keywise averaging of adapters."""

from __future__ import annotations

import torch
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fl_app.model.adapter import state_to_arrayrecord
from strategies.fedavg import keywise_average


def test_keywise_average_equals_flower_fedavg_when_keys_agree():
    states = [{"a": torch.randn(3, 2), "b": torch.randn(4)} for _ in range(3)]
    examples = [10, 30, 60]
    contents = [
        RecordDict({"arrays": state_to_arrayrecord(s), "metrics": MetricRecord({"num-examples": n})})
        for s, n in zip(states, examples)
    ]

    ours = keywise_average(states, examples)
    flowers = aggregate_arrayrecords(contents, "num-examples").to_torch_state_dict()

    assert all(torch.allclose(ours[k], flowers[k], atol=1e-6) for k in ours)


def test_keywise_average_averages_each_task_head_over_its_own_hospitals():
    states = [
        {"lora": torch.ones(2), "heads.a.w": torch.ones(2)},
        {"lora": 3 * torch.ones(2), "heads.b.w": 5 * torch.ones(2)},
    ]

    averaged = keywise_average(states, [1, 1])

    assert torch.equal(averaged["lora"], 2 * torch.ones(2))
    assert torch.equal(averaged["heads.a.w"], torch.ones(2)) and torch.equal(averaged["heads.b.w"], 5 * torch.ones(2))


def test_mixed_ranks_average_zero_padded_factors_as_hetlora_does():
    from fl_app.model.adapter import fit_rank

    small = {"m.lora_A.weight": torch.ones(2, 5), "m.lora_B.weight": torch.ones(3, 2)}
    large = {"m.lora_A.weight": 3 * torch.ones(4, 5), "m.lora_B.weight": 3 * torch.ones(3, 4)}

    averaged = keywise_average([fit_rank(small, 4), fit_rank(large, 4)], [1, 1])

    assert averaged["m.lora_A.weight"].shape == (4, 5)
    assert torch.equal(averaged["m.lora_A.weight"][:2], 2 * torch.ones(2, 5))  # both hospitals
    assert torch.equal(averaged["m.lora_A.weight"][2:], 1.5 * torch.ones(2, 5))  # the larger one, averaged with zeros
    back = fit_rank(averaged, 2)  # what the rank-2 hospital trains on next round
    assert back["m.lora_B.weight"].shape == (3, 2) and torch.equal(back["m.lora_B.weight"], 2 * torch.ones(3, 2))
