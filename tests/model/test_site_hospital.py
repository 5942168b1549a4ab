"""A hospital at a site, as its ClientApp resolves it from the node config: trains and evaluates."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, RecordDict

from fl_app.config import compose_experiment, hospital_payload
from fl_app.data.demo_sites import write_demo_image_folder
from fl_app.hospital_steps import hospital_for, hospital_id_of
from fl_app.protocol import CONFIG, version_key
from fl_app.validation import validate_experiment
from tests.conftest import TINY_SITE

SITE = ["data=site", "+data.tasks.chest.classes=[normal,pneumonia]", "train.local_epochs=1"]


@pytest.fixture
def site_experiment():
    cfg = compose_experiment([*TINY_SITE, *SITE])
    validate_experiment(cfg)
    return json.loads(hospital_payload(cfg))


def test_image_folder_site_trains_and_evaluates_its_adapter(tmp_path, site_experiment):
    folder = write_demo_image_folder(tmp_path / "chest", ["normal", "pneumonia"], n_images=30)
    hospital = hospital_for(site_experiment, {"hospital-id": 7, "task": "chest", "data-path": str(folder)})

    reply = hospital.train(None, server_round=1)
    content = RecordDict(
        {
            CONFIG: ConfigRecord(
                {"experiment": json.dumps(site_experiment), "versions": json.dumps({"mine": {"r": 4, "alpha": 16}})}
            )
        }
    )
    content[version_key("mine")] = reply["arrays"]
    scores = hospital.evaluate(content)

    assert reply["hospital"]["hospital-id"] == 7 and reply["hospital"]["task"] == "chest"
    assert reply["hospital"]["data-source"] == "synthetic"  # demo images declare themselves synthetic
    assert any("heads.chest." in key for key in reply["arrays"]) and not any(
        "heads.breastmnist." in key for key in reply["arrays"]
    )
    assert 0.0 <= scores["metrics"]["mine/acc"] <= 1.0


def test_site_experiment_has_a_head_per_declared_task(site_experiment):
    from fl_app.hospital_steps import task_outputs

    assert task_outputs(site_experiment) == {"breastmnist": 2, "pneumoniamnist": 2, "chest": 2}


def test_a_simulated_hospital_cannot_play_a_site_experiment(site_experiment):
    with pytest.raises(ValueError, match="data.scenario=site: each hospital's data lies at its site"):
        hospital_for(site_experiment, {"partition-id": 0, "num-partitions": 3})


@pytest.mark.parametrize(
    ("node_config", "expected"),
    [({"hospital-id": 4, "task": "x", "data-path": "/x"}, 4), ({"partition-id": 2, "num-partitions": 3}, 2), ({}, "?")],
)
def test_failed_replies_name_the_hospital_the_node_config_names(node_config, expected):
    assert hospital_id_of(node_config) == expected
