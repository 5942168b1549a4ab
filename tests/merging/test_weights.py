"""Merge weights per hospital and the weighted average of heads."""

import math

import pytest
import torch

from strategies.merging.weights import average_tensors, explicit_weights, hospital_weights, merge_weights


def test_merge_weights_schemes():
    assert merge_weights([10, 30, 60], "num_examples") == pytest.approx([0.1, 0.3, 0.6])
    assert merge_weights([10, 30, 60], "uniform") == pytest.approx([1 / 3] * 3)
    assert math.fsum(merge_weights([7, 11, 13], "num_examples")) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("counts", "scheme", "message"),
    [
        ([1, 2], "fedavg", r"unknown weight scheme 'fedavg'; choose one of \['uniform', 'num_examples'\]"),
        ([0, 0], "num_examples", "positive total"),
        ([], "uniform", "at least one hospital"),
        ([3, -1], "num_examples", "hospital 1 reports num_examples=-1"),
    ],
)
def test_merge_weights_validates(counts, scheme, message):
    with pytest.raises(ValueError, match=message):
        merge_weights(counts, scheme)


def test_average_tensors_renormalises_weights():
    # Prepare
    x, y = torch.zeros(2, 3), torch.ones(2, 3)

    # Execute
    mean = average_tensors([x, y], [1.0, 3.0])

    # Assert
    torch.testing.assert_close(mean, torch.full((2, 3), 0.75))
    assert mean.dtype == torch.float32


@pytest.mark.parametrize(
    ("tensors", "weights", "message"),
    [
        ([], [], "at least one tensor"),
        ([torch.ones(2)], [1.0, 1.0], "2 weights for 1 tensors"),
        ([torch.ones(2), torch.ones(3)], [1.0, 1.0], r"tensor 1 has shape \(3,\)"),
        ([torch.ones(2), torch.ones(2)], [0.0, 0.0], "positive sum"),
        ([torch.ones(2), torch.ones(2)], [1.0, -1.0], "weight 1 must be finite and >= 0"),
    ],
)
def test_average_tensors_validates(tensors, weights, message):
    with pytest.raises(ValueError, match=message):
        average_tensors(tensors, weights)


def test_explicit_weights_by_hospital_id():
    assert explicit_weights([3, 1], {"1": 0.25, 3: 2.0, 7: 1.0}) == [2.0, 0.25]
    with pytest.raises(ValueError, match=r"no weight for hospital\(s\) \[5\]"):
        explicit_weights([1, 5], {1: 1.0})


def test_hospital_weights_is_the_one_entry_point():
    ids, counts = [2, 0], [30, 10]
    assert hospital_weights(ids, counts, "uniform") == [0.5, 0.5]
    assert hospital_weights(ids, counts, "num_examples") == pytest.approx([0.75, 0.25])
    assert hospital_weights(ids, counts, "explicit", {"0": 1.0, 2: 0.5}) == [0.5, 1.0]  # by id, as given
    with pytest.raises(ValueError, match=r"weighting 'explicit' needs a weight per hospital id"):
        hospital_weights(ids, counts, "explicit", None)
    with pytest.raises(ValueError, match=r"weighting='fedavg' is not valid"):
        hospital_weights(ids, counts, "fedavg")
