"""fl_app/training.py: MedMNIST's accuracy without importing medmnist and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from medmnist.evaluator import getACC

from fl_app.data import task_info
from fl_app.training import medmnist_accuracy


def _random_split(task, n, rng, columns):
    if task.multi_label:
        labels = rng.integers(0, 2, size=(n, task.n_outputs))
    else:
        labels = rng.integers(0, task.n_outputs, size=(n, 1))
    scores = rng.random(size=(n, columns))
    scores[: n // 4] = np.round(scores[: n // 4], 1)  # ties with the threshold and between classes
    return labels, scores


@pytest.mark.parametrize(
    ("flag", "columns"),
    [
        ("breastmnist", 2),  # binary, two probabilities
        ("breastmnist", 1),  # binary, one score
        ("bloodmnist", 8),  # multi-class
        ("retinamnist", 5),  # ordinal regression
        ("chestmnist", 14),  # multi-label
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_accuracy_is_medmnists_getacc(flag, columns, seed):
    # Prepare
    rng = np.random.default_rng(seed)
    task = task_info(flag)
    labels, scores = _random_split(task, int(rng.integers(2, 300)), rng, columns)

    # Execute
    accuracy = medmnist_accuracy(labels, scores, task.task_type)

    # Assert
    assert accuracy == getACC(labels, scores, task.task_type)  # exactly, not approximately


def test_accuracy_follows_the_threshold_like_getacc():
    task = task_info("breastmnist")
    labels = np.array([[0], [1], [1], [0]])
    scores = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5], [0.2, 0.8]])

    for threshold in (0.3, 0.5, 0.75):
        assert medmnist_accuracy(labels, scores, task.task_type, threshold) == getACC(
            labels, scores, task.task_type, threshold
        )
