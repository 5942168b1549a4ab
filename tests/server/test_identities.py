"""fl_app/server/identities.py: a run says when a deployed hospital's node or data changed since an earlier run."""

from __future__ import annotations

import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from fl_app.model.adapter import state_to_arrayrecord
from fl_app.protocol import ARRAYS, HOSPITAL, METRICS, decode_train_content, hospital_record
from fl_app.server.identities import IDENTITIES_FILE, IdentityRecord, describe, identity_changes


def site(hospital_id: int, node_id: int, fingerprint: str | None) -> dict:
    return {"id": hospital_id, "node_id": node_id, "task": "breastmnist", "data_fingerprint": fingerprint}


def test_the_same_node_and_data_as_last_run_is_no_change():
    _, record = identity_changes({}, [site(0, 11, "aaaa"), site(1, 12, "bbbb")], "run-1")

    changes, _ = identity_changes(record, [site(0, 11, "aaaa"), site(1, 12, "bbbb")], "run-2")

    assert changes == []


def test_another_party_with_the_hospitals_key_shows_as_changed_data():
    # the thief's node holds hospital 0's key (same node id) but answers with its own data
    _, record = identity_changes({}, [site(0, 11, "aaaa")], "run-1")

    changes, updated = identity_changes(record, [site(0, 11, "ffff")], "run-2")

    assert changes == [
        {"hospital_id": 0, "changed": "data_fingerprint", "before": "aaaa", "now": "ffff", "last_seen_in": "run-1"}
    ]
    assert updated["0"] == {"node_id": 11, "data_fingerprint": "ffff", "run": "run-2"}
    assert "someone else may hold this hospital's key" in describe(changes[0])


def test_a_new_node_behind_a_hospital_id_is_a_change():
    _, record = identity_changes({}, [site(0, 11, "aaaa")], "run-1")

    changes, _ = identity_changes(record, [site(0, 99, "aaaa")], "run-2")

    assert [(c["changed"], c["before"], c["now"]) for c in changes] == [("node_id", 11, 99)]


def test_simulated_hospitals_are_not_compared():
    changes, record = identity_changes(
        {"0": {"node_id": 1, "data_fingerprint": None, "run": "a"}}, [site(0, 2, None)], "b"
    )

    assert changes == [] and record["0"]["node_id"] == 1


def test_the_record_lives_beside_the_run_folders_and_a_change_is_reported_once_per_run(tmp_path):
    first = IdentityRecord(tmp_path / "run-1")
    assert first.check([site(0, 11, "aaaa")]) == []
    second = IdentityRecord(tmp_path / "run-2")

    round_1 = second.check([site(0, 11, "ffff")])
    round_2 = second.check([site(0, 11, "ffff")])

    assert (tmp_path / IDENTITIES_FILE).exists()
    assert [c["changed"] for c in round_1] == ["data_fingerprint"] and round_2 == []


def test_a_corrupt_record_names_the_file_and_the_fix(tmp_path):
    (tmp_path / IDENTITIES_FILE).write_text("{not json")

    with pytest.raises(ValueError, match="move it away to start a new record"):
        IdentityRecord(tmp_path / "run-1")


def test_a_deployed_sites_fingerprint_travels_in_its_reply():
    content = RecordDict(
        {
            ARRAYS: state_to_arrayrecord({"w": torch.zeros(2)}),
            METRICS: MetricRecord({"num-examples": 10}),
            HOSPITAL: hospital_record(0, "breastmnist", 10, 5, 5, "site", 4, 8.0, "0123456789abcdef"),
        }
    )

    reply = decode_train_content(content, 7)

    assert reply.data_fingerprint == "0123456789abcdef"
    assert reply.summary()["data_fingerprint"] == "0123456789abcdef"
