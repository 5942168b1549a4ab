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


def test_every_round_version_records_the_averaged_rank_and_keeps_the_hospitals_scale():
    """One builder for a run, resume and the benchmark floor: mixed ranks 2 and 4 average to rank 4,
    alpha = (lora.alpha / lora.r) * 4, whatever `lora.r` says (the floor once recorded lora.r/alpha)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from strategies.fedavg import round_versions

    cfg = OmegaConf.create({"lora": {"r": 2, "alpha": 4.0}})
    key = "m.lora_A.weight", "m.lora_B.weight"
    hospitals = [
        SimpleNamespace(lora_r=r, n_train=10, state={key[0]: torch.ones(r, 3), key[1]: torch.ones(5, r)})
        for r in (2, 4)
    ]

    (version,) = round_versions(cfg, 3, hospitals)

    assert (version.name, version.kind, version.r, version.alpha) == ("fedavg-round-3", "fedavg", 4, 8.0)
    assert version.details == {"round": 3} and version.state[key[0]].shape == (4, 3)
