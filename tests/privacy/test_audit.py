"""The leakage audit's measures on data where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_app.privacy.audit import closeness, membership_auc, nearest_distances, nearest_indices


def test_nearest_distances_find_the_closest_row_and_can_skip_itself():
    references = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])

    assert np.allclose(nearest_distances(torch.tensor([[3.0, 4.5], [9.0, 0.0]]), references), [0.5, 1.0])
    assert np.allclose(nearest_distances(references, references, exclude_self=True), [5.0, 5.0, 65**0.5])
    assert nearest_indices(torch.tensor([[2.9, 4.0]]), references, k=2).tolist() == [[1, 0]]


def test_copies_of_training_images_are_flagged_and_fresh_samples_are_not():
    rng = np.random.default_rng(0)
    train, test = torch.from_numpy(rng.normal(size=(500, 20))), torch.from_numpy(rng.normal(size=(200, 20)))
    baseline = nearest_distances(test, train)

    copies = closeness(nearest_distances(train[:30] + 0.01, train), baseline)
    fresh = closeness(nearest_distances(torch.from_numpy(rng.normal(size=(30, 20))), train), baseline)

    assert copies.ratio < 0.05 and copies.closer_than_p5 == 1.0
    assert 0.8 < fresh.ratio < 1.25 and fresh.closer_than_p5 < 0.2


def test_membership_auc_is_one_half_without_signal_and_high_with_it():
    rng = np.random.default_rng(0)
    same = membership_auc(rng.exponential(size=2000), rng.exponential(size=500))
    memorised = membership_auc(rng.exponential(size=2000) * 0.1, rng.exponential(size=500))

    assert same == pytest.approx(0.5, abs=0.05)
    assert memorised > 0.9
    assert np.isnan(membership_auc(np.zeros(0), np.ones(3)))
