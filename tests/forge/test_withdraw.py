"""Withdraw (fl_app/forge/withdraw.py): equal to merging the remaining hospitals from scratch, for every method."""

from __future__ import annotations

import pytest

from fl_app.forge.recipe import FUSION, MIXTURE, Recipe, build
from fl_app.forge.withdraw import withdrawn_version
from strategies.medforge.branches import task_heads
from strategies.medforge.fusion import fuse
from strategies.merging import MERGE_METHODS, get_merge_method, merge_adapters, split_lora_modules
from strategies.merging.registry import task_arithmetic
from strategies.outcome import ModelVersion, merged_version
from tests.forge.conftest import assert_same_version, make_run, run_merge

LINEAR = {name for name, m in MERGE_METHODS.items() if m.fn is task_arithmetic}


@pytest.mark.parametrize("method", sorted(MERGE_METHODS))
@pytest.mark.parametrize("withdrawn", [0, 2])
def test_withdraw_equals_the_merge_of_the_others_from_scratch(tmp_path, hospitals, method, withdrawn):
    # Prepare: the run's merge of all four hospitals (hospital 2 is task b's only hospital)
    run = make_run(tmp_path, hospitals, [run_merge(hospitals, method)])

    # Execute
    version = withdrawn_version(run, "merged", withdrawn)

    # Assert: the merge of the other three, weights renormalised by the same rule
    others = [h.id for h in hospitals if h.id != withdrawn]
    assert_same_version(version, run_merge(hospitals, method, ids=others))
    assert version.details["parent"] == "merged" and version.details["withdrawn"] == [withdrawn]
    assert version.details["forge"]["path"] == ("factored" if method in LINEAR else "recomputed")
    assert version.details["hospitals"] == others


def test_uniform_and_explicit_weights_follow_their_rule(tmp_path, hospitals):
    uniform = run_merge(hospitals, "task_arithmetic", weighting="uniform")
    uniform.details["weighting"] = "uniform"
    explicit = merged_version(
        "explicit",
        merge_adapters(
            [h.state for h in hospitals],
            [h.scale for h in hospitals],
            [0.5, 1.0, -0.5, 0.25],
            [h.task for h in hospitals],
        ),
        [0, 1, 2, 3],
        [0.5, 1.0, -0.5, 0.25],
        weighting="explicit",
    )
    run = make_run(tmp_path, hospitals, [uniform, explicit])

    without_uniform = withdrawn_version(run, "merged", 1)
    without_explicit = withdrawn_version(run, "explicit", 3)

    assert_same_version(without_uniform, run_merge(hospitals, "task_arithmetic", "uniform", ids=[0, 2, 3]))
    assert without_uniform.details["weights"] == {"0": 1 / 3, "2": 1 / 3, "3": 1 / 3}
    rest = [h for h in hospitals if h.id != 3]
    want = merge_adapters([h.state for h in rest], [h.scale for h in rest], [0.5, 1.0, -0.5], [h.task for h in rest])
    assert_same_version(without_explicit, merged_version("x", want, [0, 1, 2], [0.5, 1.0, -0.5]))


def test_fusion_withdraw_keeps_the_searched_coefficients(tmp_path, hospitals):
    coefficients = {0: 0.7, 1: -0.2, 2: 1.1, 3: 0.4}
    fusion = build(None, Recipe(FUSION, coefficients), "fusion-one-shot", hospitals)
    run = make_run(tmp_path, hospitals, [fusion])

    version = withdrawn_version(run, "fusion-one-shot", 0)

    rest = hospitals[1:]
    adapters = [split_lora_modules({k: v for k, v in h.state.items() if ".lora_" in k}, h.scale) for h in rest]
    state, rank = fuse(adapters, [{m: coefficients[h.id] for m in adapters[0]} for h in rest], like=rest[0].state)
    assert_same_version(version, ModelVersion("x", "merged", {**state, **task_heads(rest)}, rank, rank))
    assert version.details["forge"]["path"] == "factored"
    assert version.details["coefficients"] == [-0.2, 1.1, 0.4]


def test_progressive_fusion_is_unrolled_into_one_coefficient_per_hospital(tmp_path, hospitals):
    # Prepare: v1 = h0, v2 = 0.8 v1 + 0.5 h1, v3 = 0.9 v2 - 0.3 h2, as the FusionBranch makes them
    chosen = hospitals[:3]
    steps = [(0, [1.0]), (1, [0.8, 0.5]), (2, [0.9, -0.3])]
    entries, versions, main = [], [], None
    for step, (hospital, coefficients) in enumerate(steps, start=1):
        h = chosen[hospital]
        new = split_lora_modules({k: v for k, v in h.state.items() if ".lora_" in k}, h.scale)
        parts = [new] if main is None else [main, new]
        state, rank = fuse(parts, [{m: c for m in new} for c in coefficients], like=h.state)
        main = split_lora_modules(state, 1.0)
        version = ModelVersion(f"fusion-v{step}", "progressive", {**state, **task_heads(chosen[:step])}, rank, rank)
        versions.append(version)
        entries.append(
            {
                "name": version.name,
                "kind": "progressive",
                "adapter": f"adapters/{version.name}",
                "r": rank,
                "lora_alpha": rank,
                "step": step,
                "hospital": hospital,
                "method": FUSION,
                "level": "whole",
                "form": "delta",
                "coefficients": coefficients,
            }
        )
    run = make_run(tmp_path, chosen, versions, entries)

    version = withdrawn_version(run, "fusion-v3", 1)

    want = build(None, Recipe(FUSION, {0: 0.72, 2: -0.3}), "x", [chosen[0], chosen[2]])
    assert_same_version(version, want)


def test_mixture_withdraw_drops_the_component_and_its_head(tmp_path, hospitals):
    mixture = build(
        None, Recipe(MIXTURE, {0: 0.5, 1: 0.1, 2: 0.3, 3: 0.2}, r=2, alpha=4.0), "mixture-one-shot", hospitals
    )
    run = make_run(tmp_path, hospitals, [mixture])

    version = withdrawn_version(run, "mixture-one-shot", 2)

    assert version.mixture == {"hospital-0": 0.5, "hospital-1": 0.1, "hospital-3": 0.2}
    assert version.tasks == ["a"]  # task b's only hospital left with its head


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("merged", 9), r"hospital 9 is not part of version 'merged'; its hospitals are \[0, 1, 2, 3\]"),
        (("nope", 0), r"no version 'nope' in .*; its versions are \[.*'merged'\]"),
        (("hospital-1", 0), r"hospital 1's own adapter, not a merge"),
    ],
)
def test_unknown_hospital_or_version_is_refused_clearly(tmp_path, hospitals, args, message):
    run = make_run(tmp_path, hospitals, [run_merge(hospitals, "task_arithmetic")])

    with pytest.raises(ValueError, match=message):
        withdrawn_version(run, *args)


def test_withdrawing_the_last_hospital_is_refused(tmp_path, hospitals):
    run = make_run(tmp_path, hospitals, [run_merge(hospitals, "task_arithmetic", ids=[1])])

    with pytest.raises(ValueError, match="only hospital of version 'merged'"):
        withdrawn_version(run, "merged", 1)


def test_registry_names_resolve():
    assert get_merge_method("svd").fn is task_arithmetic


def test_a_negative_weight_on_the_withdrawn_task_is_rebuilt_from_the_adapters(tmp_path, hospitals):
    weights = [-0.5, 1.0, 0.3, 0.25]  # hospital 0 negates its ΔW and does not shape task a's head
    states, scales, tasks = [h.state for h in hospitals], [h.scale for h in hospitals], [h.task for h in hospitals]
    negated = merged_version(
        "negated", merge_adapters(states, scales, weights, tasks), [0, 1, 2, 3], weights, weighting="explicit"
    )
    run = make_run(tmp_path, hospitals, [negated])

    version = withdrawn_version(run, "negated", 3)

    want = merge_adapters(states[:3], scales[:3], weights[:3], tasks[:3])
    assert_same_version(version, merged_version("x", want, [0, 1, 2], weights[:3]))
    assert version.details["forge"]["path"] == "recomputed"
