"""MedForge's federated search end to end in one process: real hospital steps on a stand-in Grid.

What crosses the wire is the point: with share=adapters the adapters go once and then only
coefficients; with share=merged each candidate's fused adapter; back come only scalars.
"""

from __future__ import annotations

import json

import pytest
import torch

from fl_app.candidate_scoring import CANDIDATE_PREFIX, HEADS, LOSSES, MESSAGE_TYPE, PEER_PREFIX, fused_candidate
from fl_app.config import compose_experiment
from fl_app.protocol import METRICS
from fl_app.server.experiment import run_experiment_on_grid
from fl_app.validation import validate_experiment
from tests.medforge.local_grid import LocalGrid
from tests.medforge.test_runner import FAST, flower_identity  # noqa: F401 - the fixture

FEDERATED = [
    *FAST,
    "strategy.search.source=federated",
    "strategy.search.optimizer=CMA",
    "strategy.search.geometry=convex",
    "strategy.search.start=data_free",
    "strategy.search.budget=6",
    "strategy.federated.candidates_per_round=3",
    "strategy.progressive=false",
    "strategy.baselines=[task_arithmetic]",
]


def run(tmp_path_factory, grid, *overrides):
    cfg = compose_experiment([*FEDERATED, *overrides])
    validate_experiment(cfg)
    return run_experiment_on_grid(grid, cfg, tmp_path_factory.mktemp("federated")).data


def search_messages(grid: LocalGrid):
    return [(h, m) for h, m in grid.received if m.metadata.message_type == MESSAGE_TYPE]


@pytest.fixture(scope="module")
def adapters_run(tmp_path_factory, flower_identity):  # noqa: F811
    grid = LocalGrid(3)
    results = run(tmp_path_factory, grid, "strategy.federated.share=adapters", "strategy.federated.dp_noise=0.5")
    return grid, results


def test_adapters_go_once_then_only_coefficients(adapters_run):
    grid, results = adapters_run
    messages = search_messages(grid)
    rounds = results["strategy_details"]["federated_search"]["rounds"]
    assert rounds == 2 * 2  # fusion and mixture, 6 candidates 3 at a time
    assert len(messages) == 3 * rounds
    first = {h: m for h, m in reversed(messages)}  # each hospital's first search message
    for hospital, message in messages:
        arrays = set(message.content.array_records)
        peers = {k for k in arrays if k.startswith(PEER_PREFIX)}
        assert not {k for k in arrays if k.startswith(CANDIDATE_PREFIX)}
        if message is first[hospital]:
            assert peers == {f"{PEER_PREFIX}{h}" for h in range(3)}
        else:
            assert arrays == {HEADS}  # its own task's head only, no adapter
    train = [m for _, m in grid.received if m.metadata.message_type == "train"]
    assert all("calibration" not in m.content["config"] for m in train)  # no calibration set asked for


def test_only_scalars_come_back_and_the_run_records_the_exposure(adapters_run):
    grid, results = adapters_run
    record = results["strategy_details"]["federated_search"]
    assert record["share"] == "adapters" and "every hospital's adapter" in record["exposure"]
    assert results["search_traffic"]["upload_bytes"] > 0
    assert results["search_traffic"]["download_bytes"] > results["search_traffic"]["upload_bytes"]
    searched = {id(m) for _, m in search_messages(grid)}
    replies = [c for (_, m), (_, c) in zip(grid.received, grid.replied) if id(m) in searched]
    assert len(replies) == len(searched)
    for content in replies:
        assert not content.array_records
        assert set(content[METRICS]) == {"num-examples", LOSSES}
        assert len(content[METRICS][LOSSES]) == 3


def test_dp_noise_spends_the_hospitals_ledger(adapters_run):
    grid, results = adapters_run
    rounds = results["strategy_details"]["federated_search"]["rounds"]
    for ledger in grid.ledgers.values():
        assert ledger.history == [(0.5, 1.0, 3)] * rounds  # one Gaussian release per scored candidate


def test_convex_fusion_starts_at_the_data_free_weights_and_never_ends_worse(adapters_run):
    _, results = adapters_run
    version = next(v for v in results["versions"] if v["name"] == "fusion-one-shot")
    search = version["provenance"]["search"] if "provenance" in version else version["search"]
    assert search["source"] == "federated" and search["geometry"] == "convex"
    assert sum(search["start"]) == pytest.approx(1.0) and min(version_coefficients(version)) >= 0
    assert search["objective"] <= search["start_objective"]
    assert search["trace"][0]["coefficients"] == pytest.approx(search["start"])
    profile = results["profile"]
    assert {"training", "one_shot_search_and_merge", "federated_search_rounds", "evaluation"} <= set(profile)


def version_coefficients(version):
    provenance = version.get("provenance", version)
    return provenance["coefficients"]


def test_merged_share_sends_each_candidate_fused_and_no_single_adapter(tmp_path_factory, flower_identity):  # noqa: F811
    grid = LocalGrid(3)
    results = run(tmp_path_factory, grid, "strategy.federated.share=merged", "strategy.methods=[fusion]")
    for _, message in search_messages(grid):
        arrays = set(message.content.array_records)
        assert not {k for k in arrays if k.startswith(PEER_PREFIX)}
        assert {k for k in arrays if k.startswith(CANDIDATE_PREFIX)} == {f"{CANDIDATE_PREFIX}{i}" for i in range(3)}
        request = json.loads(str(message.content["config"]["search"]))
        assert request["peers"] is None
    assert results["status"] == "completed"


def test_a_fused_candidate_is_exactly_the_weighted_sum_of_updates():
    generator = torch.Generator().manual_seed(0)
    key = "backbone.layer.conv"
    states = [
        {
            f"{key}.lora_A.weight": torch.randn(r, 6, 1, 1, generator=generator),
            f"{key}.lora_B.weight": torch.randn(5, r, 1, 1, generator=generator),
        }
        for r in (2, 4)
    ]
    fused, rank = fused_candidate(states, [2.0, 0.5], [0.3, -1.2])
    assert rank == 6

    def delta(s):
        return s[f"{key}.lora_B.weight"].flatten(1) @ s[f"{key}.lora_A.weight"].flatten(1)

    expected = 0.3 * 2.0 * delta(states[0]) - 1.2 * 0.5 * delta(states[1])
    torch.testing.assert_close(delta(fused), expected)


def test_a_federated_search_needs_a_chosen_share_and_no_progressive_versions():
    with pytest.raises(ValueError, match="share"):
        validate_experiment(compose_experiment(FEDERATED))
    with pytest.raises(ValueError, match="progressive"):
        validate_experiment(
            compose_experiment([*FEDERATED, "strategy.federated.share=adapters", "strategy.progressive=true"])
        )
    with pytest.raises(ValueError, match="share=adapters"):
        validate_experiment(compose_experiment([*FEDERATED, "strategy.federated.share=merged"]))
