"""Re-merging a run (fl_app/remerge/run.py): names it may and may not replace, refused before anything is written."""

from __future__ import annotations

import json

import pytest

from fl_app.remerge import MergeRequest, StoredRun, remerge


def _stored(tmp_path, versions) -> StoredRun:
    results = {"status": "completed", "versions": versions}
    return StoredRun(tmp_path, json.dumps(results), results, experiment=None, hospitals=[])


def _request(name: str) -> MergeRequest:
    return MergeRequest("task_arithmetic", {}, "uniform", 1.0, None, name, "task_arithmetic")


def test_the_runs_own_versions_are_never_replaced_even_with_force(tmp_path):
    run = _stored(tmp_path, [{"name": "merged", "kind": "merged"}])

    with pytest.raises(ValueError, match="one of the run's own versions; remerge never replaces those"):
        remerge(run, [_request("merged")], force=True)


def test_an_existing_remerge_version_needs_force(tmp_path):
    run = _stored(tmp_path, [{"name": "remerge-x", "kind": "merged", "remerge": {}}])

    with pytest.raises(ValueError, match="already exists .* pass --force"):
        remerge(run, [_request("remerge-x")])


def test_explicit_weighting_remerges_with_the_runs_weights_and_caps_only_counts(tmp_path):
    # A run made with strategy.weighting=explicit can be re-merged ("unknown weight scheme" before issue 11)
    import torch
    from omegaconf import OmegaConf

    from fl_app.remerge.plan import plan_requests
    from fl_app.remerge.run import merge_version
    from fl_app.remerge.stored import StoredHospital

    def state(seed):
        g = torch.Generator().manual_seed(seed)
        return {
            "m.q.lora_A.weight": torch.randn(2, 6, generator=g),
            "m.q.lora_B.weight": torch.randn(5, 2, generator=g),
            "m.heads.t.weight": torch.randn(2, 5, generator=g),
        }

    hospitals = [StoredHospital(i, "t", n, state(i), 2, 4.0) for i, n in enumerate([10, 10**9, 30])]
    strategy = {"merge": "task_arithmetic", "weighting": "explicit", "weights": {0: 1.0, 1: 0.5, 2: -0.5}}
    strategy |= {"scale": 1.0, "merge_rank": None, "merge_params": None, "robust": {"max_share": 0.5}}
    run = StoredRun(tmp_path, "{}", {}, OmegaConf.create({"strategy": strategy}), hospitals)
    (request,) = plan_requests(["task_arithmetic"], [], strategy)
    version = merge_version(run, request)
    assert version.details["weights"] == {"0": 1.0, "1": 0.5, "2": -0.5}  # explicit: as given, never capped
    expected = sum(
        w * 2.0 * h.state["m.q.lora_B.weight"] @ h.state["m.q.lora_A.weight"]
        for w, h in zip([1.0, 0.5, -0.5], hospitals)
    )
    merged = version.state["m.q.lora_B.weight"] @ version.state["m.q.lora_A.weight"]
    assert torch.allclose(merged, expected, atol=1e-5)
    # with num_examples the run's cap applies: the 1e9 count buys half the weight, not all of it
    (counted,) = plan_requests(["task_arithmetic"], [], strategy, weighting="num_examples")
    assert merge_version(run, counted).details["weights"]["1"] == pytest.approx(0.5)


def test_a_data_aware_remerge_reads_the_stored_statistics_and_leaves_out_malformed_ones(tmp_path):
    import torch
    from omegaconf import OmegaConf

    from fl_app.model.adapter import load_stats, save_stats
    from fl_app.remerge.plan import plan_requests
    from fl_app.remerge.run import merge_version
    from fl_app.remerge.stored import StoredHospital
    from tests.merging.factories import state_statistics

    # Prepare: three stored hospitals with their Grams kept beside the adapter; hospital 2's is not PSD
    def state(seed):
        g = torch.Generator().manual_seed(seed)
        return {
            "m.q.lora_A.weight": torch.randn(2, 6, generator=g),
            "m.q.lora_B.weight": torch.randn(5, 2, generator=g),
            "m.heads.t.weight": torch.randn(2, 5, generator=g),
            "m.heads.t.bias": torch.randn(2, generator=g),
        }

    hospitals = []
    for i in range(3):
        stats = state_statistics(state(i), "gram", i)
        if i == 2:
            stats["m.q.gram"] = -stats["m.q.gram"]
        save_stats(tmp_path / f"hospital-{i}", stats)
        hospitals.append(StoredHospital(i, "t", 10, state(i), 2, 4.0, load_stats(tmp_path / f"hospital-{i}")))
    strategy = {"merge": "task_arithmetic", "weighting": "num_examples", "weights": None, "scale": 1.0}
    strategy |= {"merge_rank": None, "merge_params": None, "robust": {"max_share": None}}
    run = StoredRun(tmp_path, "{}", {}, OmegaConf.create({"strategy": strategy}), hospitals)
    (request,) = plan_requests(["regmean"], [], strategy)

    # Execute
    version = merge_version(run, request)

    # Assert: merged from hospitals 0 and 1, hospital 2 named with its reason
    assert list(version.details["weights"]) == ["0", "1"]
    (left_out,) = version.details["remerge"]["left_out"]
    assert left_out["hospital"] == 2 and "not positive semi-definite" in left_out["problems"][0]
    assert load_stats(tmp_path / "nowhere") == {}
    without = StoredRun(tmp_path, "{}", {}, run.experiment, [StoredHospital(0, "t", 10, state(0), 2, 4.0)])
    with pytest.raises(ValueError, match=r"stored none: run the experiment with strategy.stats=\[gram\]"):
        merge_version(without, request)
