"""Issue 26, merging: the attacks the first screen let through, each on the path a run takes.

Heads negated, factors re-scaled for merges that average A and B, a mixed rank under fedit, all-zero
adapters setting the median, identical adapters from several nodes, and FedAvg rounds. Each test
failed on the screen before this pass.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from fl_app.adapter_keys import head_task_of
from fl_app.config import compose_experiment
from fl_app.protocol import HospitalReply
from strategies.fedavg import AdapterFedAvg
from strategies.merging import ScreenSettings, merged_update_problems, screen_adapters
from strategies.merging.validation import module_delta
from strategies.screening import MergeRefused, screen_weigh_merge
from tests.merging.test_validation import adapter as small_adapter
from tests.merging.test_validation import layout as small_layout
from tests.merging.test_validation import rejected, submit
from tests.strategies.test_one_shot import BASE, Sink, adapter, reply, strategy

HEAD_W = "base_model.model.heads.breastmnist.weight"


def honest_four() -> list[dict[str, torch.Tensor]]:
    return [small_adapter(i) for i in range(4)]


def head_vector(state) -> torch.Tensor:
    return torch.cat([t.flatten() for k, t in sorted(state.items()) if head_task_of(k) == "breastmnist"])


@pytest.mark.parametrize("factor", [1.0, 3.0, 9.0])
def test_a_negated_head_is_rejected_by_direction_and_the_merged_head_stays_honest(factor):
    # Prepare: an honest LoRA update with its own head negated at 1x to 9x its norm
    states = honest_four()
    states[3] = {k: (-factor * t if head_task_of(k) else t) for k, t in states[3].items()}
    # Execute
    result = screen_adapters(submit(states), small_layout(1e6))
    # Assert: left out for its head, the honest three merged
    assert result.accepted == [0, 1, 2]
    assert any("head points away" in p for p in rejected(result)[13])


def test_a_loud_head_is_clipped_to_the_task_median():
    states = honest_four()
    states[3] = {k: (4.0 * t if head_task_of(k) else t) for k, t in states[3].items()}

    result = screen_adapters(submit(states), small_layout(1e6))

    assert result.accepted == [0, 1, 2, 3]
    median = statistics.median(float(head_vector(s).norm()) for s in states)  # the loud one counted, as in a run
    assert float(head_vector(result.states[3]).norm()) == pytest.approx(2.0 * median, rel=1e-6)
    assert any(a.action == "clipped" and "heads.breastmnist" in a.detail for a in result.actions)


@pytest.mark.parametrize("c", [1e2, 1e6])
def test_a_refactored_adapter_is_rejected_by_its_factors(c):
    # Prepare: hospital 3 sends its honest ΔW as B·c, A/c: ΔW (all the old screen read) unchanged
    states = honest_four()
    for module in small_layout().modules:
        states[3][f"{module}.lora_B.weight"] = states[3][f"{module}.lora_B.weight"] * c
        states[3][f"{module}.lora_A.weight"] = states[3][f"{module}.lora_A.weight"] / c
    before = module_delta(honest_four()[3], small_layout().modules[0], 1.0)
    after = module_delta(states[3], small_layout().modules[0], 1.0)
    assert float((after - before).norm() / before.norm()) < 1e-5
    # Execute
    result = screen_adapters(submit(states), small_layout(1e6))
    # Assert
    assert result.accepted == [0, 1, 2]
    assert any("sqrt(s)·A" in p for p in rejected(result)[13])


def test_an_extreme_lora_alpha_with_b_scaled_to_match_is_rejected():
    states = honest_four()
    subs = submit(states)
    # alpha 1e6 x larger, B 1e6 x smaller: the same ΔW = (alpha / r)·B·A
    evil = {k: (t / 1e6 if ".lora_B." in k else t) for k, t in states[3].items()}
    subs[3] = type(subs[3])(subs[3].hospital_id, subs[3].task, evil, subs[3].lora_r, subs[3].lora_alpha * 1e6)

    result = screen_adapters(subs, small_layout(1e6))

    assert result.accepted == [0, 1, 2]
    assert any("sqrt(s)·A" in p for p in rejected(result)[13])


def test_fedit_refuses_an_amplified_merge_the_screen_could_not_see():
    # Prepare: two hospitals (no majority, so no factor median), one re-factored by c = 1e4
    merge, _ = strategy("strategy.merge=fedit")
    evil = adapter(1)
    for key in list(evil):
        if key.endswith("lora_B.weight"):
            evil[key] = evil[key] * 1e4
        elif key.endswith("lora_A.weight"):
            evil[key] = evil[key] / 1e4
    # Execute / Assert: refused with the module and the limit named; nothing merged
    with pytest.raises(MergeRefused, match="max_merged_ratio"):
        merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, evil)])
    assert merge.merged is None


def test_merged_update_bound_holds_for_honest_merges():
    subs = submit(honest_four())
    for method in ("task_arithmetic", "ties", "fedit", "dare_ties"):
        cfg = compose_experiment([*BASE, f"strategy.merge={method}"])
        hospitals = [reply_of(s) for s in subs]
        merged = screen_weigh_merge(hospitals, cfg.strategy, None)
        assert merged_update_problems(merged.result.state, subs, merged.weights, 1.0, 10.0) == [], method


def reply_of(sub):
    return HospitalReply(
        node_id=100 + sub.hospital_id,
        hospital_id=sub.hospital_id,
        task=sub.task,
        n_train=100,
        n_val=10,
        n_test=10,
        data_source="synthetic",
        metrics={},
        state=dict(sub.state),
        lora_r=sub.lora_r,
        lora_alpha=sub.lora_alpha,
    )


def rank_eight(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An honest hospital at lora-r 8: its rank-4 adapter plus four more small directions."""
    extra = torch.Generator().manual_seed(8)
    grown = dict(state)
    for key, t in state.items():
        if key.endswith("lora_A.weight"):
            grown[key] = torch.cat([t, torch.randn(t.shape, generator=extra)], dim=0)
        elif key.endswith("lora_B.weight"):
            grown[key] = torch.cat([t, 1e-5 * torch.randn(t.shape, generator=extra)], dim=1)
    return grown


def test_a_mixed_rank_hospital_is_left_out_of_fedit_instead_of_failing_the_round():
    merge, sink = strategy("strategy.merge=fedit")

    merge.aggregate_train(
        1,
        [reply(0, adapter(0)), reply(1, adapter(1)), reply(2, rank_eight(adapter(2)), lora_r=8, lora_alpha=16.0)],
    )

    assert [h.hospital_id for h in merge.hospitals] == [0, 1]
    failure = sink.rounds[0][1][0]
    assert failure["hospital_id"] == 2 and "needs one rank" in failure["error"]


def test_the_same_mixed_rank_hospital_is_merged_by_task_arithmetic():
    merge, sink = strategy()

    merge.aggregate_train(
        1,
        [reply(0, adapter(0)), reply(1, adapter(1)), reply(2, rank_eight(adapter(2)), lora_r=8, lora_alpha=16.0)],
    )

    assert [h.hospital_id for h in merge.hospitals] == [0, 1, 2] and sink.rounds[0][1] == []


def test_all_zero_adapters_do_not_define_normal():
    # Prepare: two untrained (all-zero ΔW) adapters, two trained honest ones
    states = honest_four()
    for i in (0, 1):
        states[i] = {k: (torch.zeros_like(t) if ".lora_B." in k else t) for k, t in states[i].items()}
    # Execute
    result = screen_adapters(submit(states), small_layout(1e6))
    # Assert: the trained ones are merged, the zero ones named
    assert result.accepted == [2, 3]
    assert all("zero in every LoRA module" in rejected(result)[h][0] for h in (10, 11))


def test_identical_flipped_adapters_from_two_nodes_are_one_party_and_cannot_evict_the_honest():
    # Prepare: two honest hospitals, two nodes sending one byte-identical sign-flipped adapter (half)
    honest = [small_adapter(0), small_adapter(1)]
    flipped = {k: (-t if ".lora_B." in k else t) for k, t in small_adapter(2).items()}
    states = [*honest, flipped, {k: t.clone() for k, t in flipped.items()}]
    # Execute
    result = screen_adapters(submit(states), small_layout(1e6))
    # Assert: the honest ones stay; the copies are recorded as one party and rejected by the majority
    assert result.accepted == [0, 1]
    assert any(a.action == "duplicates" and "[12, 13]" in a.detail for a in result.actions)
    assert all("points away" in p for h in (12, 13) for p in rejected(result)[h])


def test_a_tie_in_the_direction_vote_evicts_no_one():
    # Prepare: two honest, two distinct sign-flipped: no majority on either side
    states = [small_adapter(0), small_adapter(1)] + [
        {k: (-t if ".lora_B." in k else t) for k, t in small_adapter(i).items()} for i in (2, 3)
    ]
    # Execute
    result = screen_adapters(submit(states), small_layout(1e6))
    # Assert: nobody is evicted on direction; the record says why
    assert result.accepted == [0, 1, 2, 3]
    assert any(a.action == "direction_tie" for a in result.actions)


def test_a_party_of_copies_shares_one_hospitals_weight():
    merge, _ = strategy("strategy.weighting=uniform", "strategy.robust.max_share=null")
    copy = adapter(1)

    merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, copy), reply(2, {k: t.clone() for k, t in copy.items()})])

    assert merge.weights == pytest.approx([0.5, 0.25, 0.25])
    assert merge.merged.parties == [[1, 2]]


def test_fedavg_rounds_are_screened():
    # Prepare: a FedAvg round with a hospital whose head is negated and whose B is re-factored
    cfg = compose_experiment([*BASE, "strategy=fedavg", "strategy.min_hospitals=2"])
    sink = Sink()
    fedavg = AdapterFedAvg(cfg, sink=sink)
    evil = {k: (-5.0 * t if head_task_of(k) else t) for k, t in adapter(3).items()}
    # Execute
    fedavg.aggregate_train(1, [reply(i, adapter(i)) for i in range(3)] + [reply(3, evil)])
    # Assert: the round's failures name it; its global adapter is the honest three's average
    failures = sink.rounds[0][1]
    assert [f["hospital_id"] for f in failures] == [3] and failures[0]["phase"] == "screen"
    honest = [adapter(i) for i in range(3)]
    assert torch.allclose(fedavg.round_states[0][HEAD_W], sum(s[HEAD_W] for s in honest) / 3, atol=1e-6)


def test_screen_settings_validate_the_new_bounds():
    with pytest.raises(ValueError, match="duplicate_tolerance"):
        ScreenSettings(duplicate_tolerance=2.0)
    with pytest.raises(ValueError, match="max_merged_ratio"):
        ScreenSettings(max_merged_ratio=0.0)


def test_a_task_level_screen_action_is_logged_without_hospital_none(caplog):
    merge, _ = strategy()

    merge.aggregate_train(1, [reply(0, adapter(0)), reply(1, adapter(1))])  # two hospitals: no majority

    assert "hospital None" not in caplog.text
