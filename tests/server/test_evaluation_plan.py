"""Which versions each hospital evaluates (fl_app/server/evaluation_plan.py) and the messages built from it."""

from __future__ import annotations

import json

import torch
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import OmegaConf

from fl_app.protocol import CONFIG, VERSION_PREFIX
from fl_app.server.evaluation import HospitalScores, evaluation_messages, planned_scores
from fl_app.server.evaluation_plan import (
    cross_evaluation,
    keep_planned,
    scored_versions,
    versions_for_hospital,
)
from strategies.outcome import ModelVersion


def _state() -> dict[str, torch.Tensor]:
    return {"base_model.model.heads.breastmnist.weight": torch.ones(2, 3)}


def _versions(n: int = 3, mixture: bool = False) -> list[ModelVersion]:
    versions = [ModelVersion(f"hospital-{i}", "hospital", _state(), 4, 8.0, {"hospital": i}) for i in range(n)]
    versions.append(ModelVersion("merged", "merged", _state(), 8, 8.0, {}))
    if mixture:
        versions.append(
            ModelVersion(
                "mixture-one-shot", "merged", _state(), 4, 8.0, {}, mixture={"hospital-0": 0.5, "hospital-2": 0.5}
            )
        )
    return versions


def _names(versions: list[ModelVersion]) -> list[str]:
    return [v.name for v in versions]


def test_by_default_a_hospital_gets_every_global_version_and_only_its_own_adapter():
    versions = _versions()

    planned = {h: _names(versions_for_hospital(versions, h, cross=False)) for h in range(3)}

    assert planned == {0: ["hospital-0", "merged"], 1: ["hospital-1", "merged"], 2: ["hospital-2", "merged"]}


def test_cross_evaluation_sends_every_version_everywhere():
    versions = _versions()

    assert _names(versions_for_hospital(versions, 1, cross=True)) == _names(versions)


def test_a_node_of_unknown_hospital_gets_only_the_global_versions():
    assert _names(versions_for_hospital(_versions(), None, cross=False)) == ["merged"]


def test_a_mixture_brings_its_components_which_are_not_scored_there():
    versions = _versions(mixture=True)

    carried = _names(versions_for_hospital(versions, 1, cross=False))
    scored = scored_versions(versions, 1, cross=False)

    assert carried == ["hospital-0", "hospital-1", "hospital-2", "merged", "mixture-one-shot"]
    assert scored == ["hospital-1", "merged", "mixture-one-shot"]


def test_keep_planned_drops_the_scores_of_unplanned_versions():
    score = HospitalScores(
        1, "breastmnist", 10, {"num-examples": 10.0, "hospital-0/acc": 0.1, "hospital-1/acc": 0.9, "merged/acc": 0.5}
    )

    kept = keep_planned(score, ["hospital-1", "merged"])

    assert kept.metrics == {"num-examples": 10.0, "hospital-1/acc": 0.9, "merged/acc": 0.5}


def test_planned_scores_keep_the_cross_cells_only_with_cross_evaluation():
    versions = _versions(2)
    scores = [HospitalScores(0, "t", 5, {"hospital-0/acc": 1.0, "hospital-1/acc": 0.0, "merged/acc": 0.5})]

    assert set(planned_scores(scores, versions, cross=False)[0].metrics) == {"hospital-0/acc", "merged/acc"}
    assert set(planned_scores(scores, versions, cross=True)[0].metrics) == {
        "hospital-0/acc",
        "hospital-1/acc",
        "merged/acc",
    }


def test_messages_carry_each_nodes_plan_and_share_the_global_arrays(monkeypatch):
    for field in ("_run_id", "_node_id", "_task_id"):  # Flower messages outside a run need an identity
        monkeypatch.setattr(TaskIdentity, field, 1)
    versions = _versions()

    messages = evaluation_messages(versions, "{}", [10, 11, 12], hospital_of_node={10: 0, 11: 1}, cross=False)

    carried = [json.loads(str(m.content[CONFIG]["versions"])) for m in messages]
    assert [sorted(c) for c in carried] == [["hospital-0", "merged"], ["hospital-1", "merged"], ["merged"]]
    assert [m.metadata.dst_node_id for m in messages] == [10, 11, 12]
    merged = [m.content[VERSION_PREFIX + "merged"] for m in messages]
    assert merged[0] is merged[1] is merged[2]  # one copy on the server whatever N is


def test_cross_evaluation_is_off_unless_the_strategy_says_so():
    assert cross_evaluation(OmegaConf.create({})) is False
    assert cross_evaluation(OmegaConf.create({"cross_evaluation": True})) is True
