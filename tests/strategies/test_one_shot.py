"""The one-shot strategy's aggregation: screening bad adapters, weights, failures recorded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from fl_app.config import compose_experiment
from fl_app.model.adapter import state_to_arrayrecord
from fl_app.protocol import ARRAYS, HOSPITAL, METRICS, hospital_record
from strategies.one_shot import OneShotMerge
from strategies.replies import NotEnoughHospitals
from strategies.screening import expected_layout
from tests.conftest import TINY_MODEL

BASE = ["data=multi_center", "data.flags=[breastmnist]", "strategy.min_hospitals=2", *TINY_MODEL]
LAYOUT = expected_layout(compose_experiment(BASE))
MODULE = LAYOUT.modules[0]


def adapter(seed: int, task: str = "breastmnist", r: int = 4) -> dict[str, torch.Tensor]:
    """An adapter of the experiment's layout: A from a shared init, B = a shared direction + hospital noise, small."""
    shared, own = torch.Generator().manual_seed(0), torch.Generator().manual_seed(seed)
    state = {}
    for key, signature in LAYOUT.lora.items():
        shape = tuple(r if d is None else d for d in signature)
        if key.endswith("lora_A.weight"):
            state[key] = torch.randn(shape, generator=shared)
        else:
            state[key] = 1e-3 * (torch.randn(shape, generator=shared) + 0.3 * torch.randn(shape, generator=own))
    head_init = torch.Generator().manual_seed(1)  # the seeded initial head every hospital starts from
    for key, shape in LAYOUT.heads[task].items():
        state[key] = 0.01 * torch.randn(shape, generator=head_init) + 0.003 * torch.randn(shape, generator=own)
    return state


def reply(
    hospital_id: int, state: dict[str, torch.Tensor], n_train: int = 100, lora_r: int = 4, lora_alpha: float = 8.0
) -> SimpleNamespace:
    content = RecordDict(
        {
            ARRAYS: state_to_arrayrecord(state),
            METRICS: MetricRecord({"num-examples": n_train}),
            HOSPITAL: hospital_record(hospital_id, "breastmnist", n_train, 10, 10, "synthetic", lora_r, lora_alpha),
        }
    )
    return SimpleNamespace(
        content=content, metadata=SimpleNamespace(src_node_id=100 + hospital_id), has_error=lambda: False
    )


class Sink:
    def __init__(self, bound: dict[int, int] | None = None) -> None:
        self.rounds = []
        self.bound = bound or {}

    def record_round(self, server_round, hospitals, failures):
        self.rounds.append(([h.hospital_id for h in hospitals], [f.as_dict() for f in failures]))

    def bound_nodes(self):
        return self.bound


def strategy(*overrides: str, bound: dict[int, int] | None = None) -> tuple[OneShotMerge, Sink]:
    sink = Sink(bound)
    cfg = compose_experiment([*BASE, *overrides])
    return OneShotMerge(cfg, sink=sink), sink


def test_an_adapter_with_nan_is_left_out_and_the_reason_recorded():
    merge, sink = strategy()
    poisoned = adapter(2)
    poisoned[f"{MODULE}.lora_B.weight"][0, 0] = float("nan")

    merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, adapter(1)), reply(2, poisoned)])

    assert [h.hospital_id for h in merge.hospitals] == [0, 1]
    delivered, failures = sink.rounds[0]
    assert delivered == [0, 1, 2]
    assert failures[0]["hospital_id"] == 2 and failures[0]["phase"] == "screen"
    assert MODULE in failures[0]["tensor"] and "NaN" in failures[0]["problem"]


def test_an_outlying_norm_is_rejected_with_the_configured_factor():
    merge, sink = strategy("strategy.screen.norm_factor=5")
    loud = {k: (v * 100 if ".lora_B." in k else v) for k, v in adapter(2).items()}

    merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, adapter(1)), reply(2, loud)])

    assert [h.hospital_id for h in merge.hospitals] == [0, 1]
    assert "norm" in sink.rounds[0][1][0]["problem"]


def test_explicit_weights_are_used_as_given():
    merge, _ = strategy("strategy.weighting=explicit", "strategy.weights={0: 1.0, 1: 0.5}")
    same = adapter(0)

    merge.aggregate_train(1, [reply(0, same), reply(1, same)])

    assert merge.weights == [1.0, 0.5]  # not renormalised
    lora = {k: v for k, v in merge.merge_result.state.items() if ".lora_" in k}
    delta = lora[f"{MODULE}.lora_B.weight"] @ lora[f"{MODULE}.lora_A.weight"]
    expected = 1.5 * (8.0 / 4) * same[f"{MODULE}.lora_B.weight"] @ same[f"{MODULE}.lora_A.weight"]
    assert torch.allclose(delta, expected, atol=1e-4)


def test_explicit_weights_must_name_every_hospital():
    merge, _ = strategy("strategy.weighting=explicit", "strategy.weights={0: 1.0}")

    with pytest.raises(ValueError, match=r"no weight for hospital\(s\) \[1\]"):
        merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, adapter(1))])


def test_too_few_good_adapters_stop_the_merge():
    merge, _ = strategy("strategy.min_hospitals=2")
    poisoned = adapter(1)
    poisoned[f"{MODULE}.lora_A.weight"][0, 0] = float("inf")

    with pytest.raises(NotEnoughHospitals, match="only 1 hospital"):
        merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, poisoned)])


def test_method_parameters_from_config_reach_the_merge():
    merge, _ = strategy("strategy.merge=ties", "strategy.merge_params={density:0.5}")

    merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, adapter(1)), reply(2, adapter(2))])

    assert merge.merge_result.params["density"] == 0.5


def test_two_unbound_nodes_claiming_one_hospital_id_are_both_refused():
    one_shot, sink = strategy()
    twin = reply(1, adapter(2))
    twin.metadata.src_node_id = 99  # a lower node id than the genuine 101: it used to win

    one_shot.aggregate_train(1, [reply(0, adapter(1)), reply(1, adapter(3)), twin, reply(2, adapter(4))])

    _, failures = sink.rounds[0]
    assert [h.hospital_id for h in one_shot.hospitals] == [0, 2]
    assert sorted((f["hospital_id"], f["node_id"], f["reason"]) for f in failures) == [
        (1, 99, "rejected"),
        (1, 101, "rejected"),
    ]
    assert "give each SuperNode its own hospital-id" in failures[0]["error"]


def test_a_bound_hospital_id_keeps_its_node_and_refuses_an_impostor():
    one_shot, sink = strategy(bound={100: 0, 101: 1, 102: 2})
    impostor = reply(0, adapter(2))
    impostor.metadata.src_node_id = 7  # lower node id, same hospital id, not registered for it

    one_shot.aggregate_train(1, [impostor, reply(0, adapter(1)), reply(1, adapter(3))])

    _, failures = sink.rounds[0]
    assert [(h.hospital_id, h.node_id) for h in one_shot.hospitals] == [(0, 100), (1, 101)]
    assert [(f["hospital_id"], f["node_id"], f["reason"]) for f in failures] == [(0, 7, "rejected")]
    assert "belongs to node 100" in failures[0]["error"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lora_r", 0, "lora-r=0 is not an integer >= 1"),
        ("lora_alpha", float("nan"), "lora-alpha=nan is not a finite number > 0"),
        ("lora_alpha", float("inf"), "lora-alpha=inf is not a finite number > 0"),
        ("n_train", -5, "n-train=-5 is not an integer >= 1"),
    ],
)
def test_a_malformed_reply_is_left_out_and_the_others_merged(field, value, message):
    # Before: ZeroDivisionError / ValueError inside aggregate_train, after every hospital had trained
    merge, sink = strategy()

    merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, adapter(1)), reply(2, adapter(2), **{field: value})])

    assert [h.hospital_id for h in merge.hospitals] == [0, 1]
    delivered, failures = sink.rounds[0]
    assert delivered == [0, 1]
    assert failures[0]["hospital_id"] == 2 and message in failures[0]["error"]


def test_the_documented_negative_weight_example_merges():
    # conf/strategy/one_shot.yaml's example: hospital 2's ΔW is subtracted; heads use the positive weights
    merge, _ = strategy("strategy.weighting=explicit", "strategy.weights={0: 1.0, 1: 0.5, 2: -0.5}")
    states = [adapter(i) for i in range(3)]

    merge.aggregate_train(1, [reply(i, s) for i, s in enumerate(states)])

    merged = merge.merge_result.state
    key = next(k for k in LAYOUT.heads["breastmnist"] if k.endswith("weight"))
    expected_head = (1.0 * states[0][key] + 0.5 * states[1][key]) / 1.5
    assert torch.allclose(merged[key], expected_head, atol=1e-6)
    a, b = f"{MODULE}.lora_A.weight", f"{MODULE}.lora_B.weight"
    expected = sum(w * 2.0 * s[b] @ s[a] for w, s in zip([1.0, 0.5, -0.5], states))
    assert torch.allclose(merged[b] @ merged[a], expected, atol=1e-6)


def test_an_inflated_example_count_buys_at_most_the_capped_share():
    merge, _ = strategy()  # weighting num_examples, robust.max_share 0.5

    merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, adapter(1)), reply(2, adapter(2), n_train=10**9)])

    assert merge.weights == pytest.approx([0.25, 0.25, 0.5])
    uncapped, _ = strategy("strategy.robust.max_share=null")
    uncapped.aggregate_train(1, [reply(0, adapter(0)), reply(1, adapter(1)), reply(2, adapter(2), n_train=10**9)])
    assert uncapped.weights[2] > 0.999


def test_a_head_for_another_task_is_dropped_before_the_merge():
    merge, _ = strategy()
    smuggler = adapter(2) | {"base_model.model.heads.retinamnist.weight": torch.ones(5, 48)}

    merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, adapter(1)), reply(2, smuggler)])

    assert [h.hospital_id for h in merge.hospitals] == [0, 1, 2]
    assert not any("retinamnist" in k for k in merge.merge_result.state)
    assert [(a.hospital_id, a.action) for a in merge.screen_actions] == [(2, "dropped")]


def test_regmean_asks_hospitals_for_grams_and_leaves_out_one_whose_gram_is_malformed():
    from fl_app.merge_stats import REQUEST, STATS, StatsRequest
    from strategies.one_shot import stats_instructions
    from tests.merging.factories import state_statistics

    # Prepare: three replies carrying Grams; hospital 1's Gram of one module is not symmetric
    merge, sink = strategy("strategy.merge=regmean", "strategy.stats=[fisher]", "strategy.fisher_examples=16")
    replies = [reply(i, adapter(i)) for i in range(3)]
    for i, r in enumerate(replies):
        stats = state_statistics(adapter(i), "gram", i)
        if i == 1:
            stats[f"{MODULE}.gram"] = stats[f"{MODULE}.gram"] + torch.triu(torch.ones_like(stats[f"{MODULE}.gram"]), 1)
        r.content[STATS] = state_to_arrayrecord(stats)

    # Execute
    request = StatsRequest.from_json(stats_instructions(merge.cfg.strategy)[REQUEST])
    merge.aggregate_train(1, replies)

    # Assert: the merge's statistics and strategy.stats are asked for; the screen named the bad Gram
    assert request == StatsRequest(("fisher", "gram"), fisher_examples=16)
    assert [h.hospital_id for h in merge.hospitals] == [0, 2]
    (failure,) = sink.rounds[0][1]
    assert (
        failure["hospital_id"] == 1 and failure["tensor"] == f"{MODULE}.gram" and "not symmetric" in failure["problem"]
    )
    assert merge.merged.result.method == "regmean"
    assert stats_instructions(strategy()[0].cfg.strategy) == {}  # a data-free merge asks for nothing


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy.stats=[hessian]"], r"unknown statistics \['hessian'\]; choose from \['gram', 'fisher'\]"),
        (["strategy.merge=regmean", "privacy=dp"], r"no DP release yet"),
        (["strategy.merge=fisher", "simulation.lora_r=[2,4]"], r"averages A and B separately"),
    ],
)
def test_bad_statistics_settings_are_refused_naming_the_setting(tiny_experiment, overrides, message):
    from fl_app.validation import validate_experiment

    with pytest.raises(ValueError, match=message):
        validate_experiment(tiny_experiment(*overrides))
