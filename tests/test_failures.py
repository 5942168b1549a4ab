"""The failure record: one type for every hospital left out, as results.json lists it."""

from fl_app.failures import Failure


def test_as_dict_is_the_results_json_form():
    failure = Failure(2, "train", "disk full", node_id=7, round=1)

    assert failure.as_dict() == {"node_id": 7, "hospital_id": 2, "round": 1, "phase": "train", "error": "disk full"}
    assert failure.describe() == "hospital 2 (node 7): disk full"


def test_screen_failures_name_the_tensor_and_problem():
    failure = Failure(0, "screen", "rejected", node_id=3, round=1, tensor="m.lora_A.weight", problem="NaN")

    assert failure.as_dict()["tensor"] == "m.lora_A.weight" and failure.as_dict()["problem"] == "NaN"
