"""The failure record: one type for every hospital left out, as results.json lists it."""

from fl_app.failures import Failure


def test_as_dict_is_the_results_json_form():
    failure = Failure(2, "train", "disk full", node_id=7, round=1)

    assert failure.as_dict() == {
        "node_id": 7,
        "hospital_id": 2,
        "round": 1,
        "phase": "train",
        "reason": "error",
        "error": "disk full",
    }
    assert failure.describe() == "hospital 2 (node 7): disk full"


def test_a_node_whose_hospital_is_unknown_is_named_by_its_node_not_hospital_none():
    failure = Failure(None, "train", "Node Unavailable", node_id=7, round=1)

    assert failure.describe() == "node 7: Node Unavailable"


def test_screen_failures_name_the_tensor_and_problem():
    failure = Failure(0, "screen", "rejected", node_id=3, round=1, tensor="m.lora_A.weight", problem="NaN")

    assert failure.as_dict()["tensor"] == "m.lora_A.weight" and failure.as_dict()["problem"] == "NaN"


def test_the_cause_comes_from_the_error_code():
    from fl_app.failures import ERROR_CODE_TIMEOUT, failure_cause

    assert failure_cause(ERROR_CODE_TIMEOUT, "") == "timeout"
    assert failure_cause(5, "Error: Node Unavailable") == "unavailable"
    assert failure_cause(0, "<class 'ray.exceptions.ActorDiedError'>:<'The actor died'>") == "crashed"
    assert failure_cause(1001, "hospital-id=2: FileNotFoundError") == "error"


def test_a_record_reads_back_from_results_json_under_the_same_names():
    failure = Failure(
        0, "screen", "NaN in B", node_id=3, round=1, tensor="m.lora_B.weight", problem="NaN", reason="rejected"
    )
    on_disk = {
        "node_id": 5,
        "hospital_id": None,
        "round": 2,
        "phase": "train",
        "reason": "timeout",
        "error": "no reply",
    }

    assert Failure.from_record(failure.as_dict()) == failure
    assert Failure.from_record(on_disk).as_dict() == on_disk  # a file written before the names were aligned
