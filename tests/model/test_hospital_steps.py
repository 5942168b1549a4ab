"""A hospital's steps without Flower: backbone reuse, training, evaluation of versions."""

from __future__ import annotations

import json

import torch
from flwr.app import ConfigRecord, RecordDict

import fl_app.model.lora as lora_module
from fl_app.config import hospital_payload
from fl_app.hospital_steps import simulated_hospital
from fl_app.protocol import CONFIG, version_key
from fl_app.server.evaluation import hospital_scores


def test_backbone_is_built_once_per_process_for_all_hospitals(tiny_experiment, monkeypatch):
    builds = []
    real_build = lora_module.build_backbone
    monkeypatch.setattr(lora_module, "build_backbone", lambda cfg: builds.append(1) or real_build(cfg))
    lora_module._cached_hospital_model.cache_clear()
    experiment = json.loads(hospital_payload(tiny_experiment("data=multi_center", "data.flags=[breastmnist]")))

    hospitals = [simulated_hospital(experiment, i, 3) for i in range(3)]
    replies = [hospital.train(None, server_round=1) for hospital in hospitals]
    versions = {f"hospital-{i}": {"r": 4, "alpha": 16} for i in range(3)}
    content = RecordDict(
        {CONFIG: ConfigRecord({"experiment": json.dumps(experiment), "versions": json.dumps(versions)})}
    )
    for i, reply in enumerate(replies):
        content[version_key(f"hospital-{i}")] = reply["arrays"]
    for i in (2, 0, 1):  # a worker's next messages: every hospital evaluates every version
        simulated_hospital(experiment, i, 3).evaluate(content)

    assert len(builds) == 1
    assert len({id(h.model) for h in hospitals}) == 1


def test_training_then_evaluating_real_breastmnist(breast_root, tiny_experiment):
    cfg = tiny_experiment(
        "data=multi_center",
        "data.flags=[breastmnist]",
        f"data.root={breast_root}",
        "data.max_train=null",
        "data.max_eval=null",
    )
    experiment = json.loads(hospital_payload(cfg))
    hospital = simulated_hospital(experiment, 0, 3)

    reply = hospital.train(None, server_round=1)
    content = RecordDict(
        {
            CONFIG: ConfigRecord(
                {"experiment": json.dumps(experiment), "versions": json.dumps({"mine": {"r": 4, "alpha": 16}})}
            )
        }
    )
    content[version_key("mine")] = reply["arrays"]
    scores = hospital.evaluate(content)
    decoded = hospital_scores(scores)

    assert decoded.metrics["mine/auc-hist"].sum() == len(hospital.data.test)  # binary: one column, every sample once
    assert hospital.data.data_source == "medmnist"
    assert reply["metrics"]["num-examples"] == len(hospital.data.train) > 100
    assert 0.0 <= scores["metrics"]["mine/acc"] <= 1.0
    assert scores["metrics"]["num-examples"] == len(hospital.data.test)


def test_training_is_reproducible_whatever_the_process_did_before(tiny_experiment):
    experiment = json.loads(hospital_payload(tiny_experiment("lora.dropout=0.3")))
    hospital = simulated_hospital(experiment, 1, 3)

    first = hospital.train(None, server_round=1)["arrays"].to_torch_state_dict()
    simulated_hospital(experiment, 2, 3).train(None, server_round=1)  # another hospital in between moves the RNG
    second = hospital.train(None, server_round=1)["arrays"].to_torch_state_dict()

    assert all(torch.equal(first[k], second[k]) for k in first)


def test_hospitals_of_different_capacity_train_their_own_rank(tiny_experiment):
    from fl_app.hospital_steps import hospital_lora

    cfg = tiny_experiment("data=multi_center", "data.flags=[breastmnist]", "simulation.lora_r=[2,4]", "lora.alpha=8")
    experiment = json.loads(hospital_payload(cfg))

    reply = simulated_hospital(experiment, 1, 3).train(None, server_round=1)

    assert [hospital_lora(experiment, i)["r"] for i in range(3)] == [2, 4, 2]
    assert hospital_lora(experiment, 1)["alpha"] == 8.0 and hospital_lora(experiment, 0)["alpha"] == 4.0  # lora.r = 4
    assert hospital_lora(experiment, 0, {"lora-r": 16, "lora-alpha": 3})["r"] == 16  # a site's node config wins
    assert reply["hospital"]["lora-r"] == 4
    assert all(a.shape[0] == 4 for k, a in reply["arrays"].to_torch_state_dict().items() if k.endswith("lora_A.weight"))


def test_a_hospital_asked_for_merge_statistics_sends_them_beside_its_adapter(tiny_experiment):
    from fl_app.merge_stats import STATS, StatsRequest
    from fl_app.protocol import decode_train_content

    experiment = json.loads(hospital_payload(tiny_experiment("data=multi_center", "data.flags=[breastmnist]")))
    hospital = simulated_hospital(experiment, 0, 3)

    reply = hospital.train(None, server_round=1, stats=StatsRequest(("fisher", "gram"), fisher_examples=8))
    plain = hospital.train(None, server_round=1)

    decoded = decode_train_content(reply, node_id=5)
    modules = {k[: -len(".lora_A.weight")] for k in decoded.state if k.endswith(".lora_A.weight")}
    head = next(k for k in decoded.state if k.endswith(".weight") and ".heads." in k)
    grams = {k: t for k, t in decoded.stats.items() if k.endswith(".gram")}
    assert set(grams) == {m + ".gram" for m in modules} | {head[: -len(".weight")] + ".gram"}
    for module in modules:  # d_in x d_in, symmetric, positive semi-definite
        gram = grams[module + ".gram"].double()
        d_in = decoded.state[module + ".lora_A.weight"].shape[1]
        assert gram.shape == (d_in, d_in)
        assert torch.allclose(gram, gram.T, atol=1e-6)
        assert torch.linalg.eigvalsh(gram).min() >= -1e-5 * gram.trace()
    head_gram = grams[head[: -len(".weight")] + ".gram"]
    assert head_gram.shape == (decoded.state[head].shape[1] + 1,) * 2 and head_gram[-1, -1] == 1.0  # bias column
    fishers = {k: t for k, t in decoded.stats.items() if k.endswith(".fisher")}
    assert set(fishers) == {k + ".fisher" for k in decoded.state}
    assert all(fishers[k + ".fisher"].shape == decoded.state[k].shape for k in decoded.state)
    assert all(bool((t >= 0).all()) for t in fishers.values()) and any(float(t.sum()) > 0 for t in fishers.values())
    assert reply["metrics"]["merge-stats-bytes"] == sum(t.numel() * 4 for t in decoded.stats.values())
    assert STATS not in plain and decoded.upload_bytes > decode_train_content(plain, node_id=5).upload_bytes
