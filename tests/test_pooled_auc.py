"""Pooled AUC from score histograms equals MedMNIST's AUC on the union of test splits."""

from __future__ import annotations

import numpy as np
import pytest
from medmnist.evaluator import getAUC
from scipy.stats import rankdata

from fl_app.data import task_info
from fl_app.pooled_auc import (
    auc_from_histograms,
    average_ranks,
    dense_histograms,
    score_histograms,
    sparse_histograms,
    split_auc,
)


def _random_split(task, n, rng):
    if task.multi_label:
        labels = rng.integers(0, 2, size=(n, task.n_outputs))
        scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    else:
        labels = rng.integers(0, task.n_outputs, size=(n, 1))
        logits = rng.normal(size=(n, task.n_outputs)) + 1.5 * np.eye(task.n_outputs)[labels[:, 0]]
        scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, scores


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist", "chestmnist"])
def test_summed_histograms_give_the_auc_of_the_pooled_scores(flag):
    rng = np.random.default_rng(0)
    task = task_info(flag)
    splits = [_random_split(task, n, rng) for n in (40, 300, 90)]

    pooled = auc_from_histograms(sum(score_histograms(task, labels, scores) for labels, scores in splits))

    labels = np.concatenate([s[0] for s in splits])
    scores = np.concatenate([s[1] for s in splits])
    assert pooled == pytest.approx(getAUC(labels, scores, task.task_type), abs=2e-3)


def test_undefined_when_a_class_is_missing():
    task = task_info("breastmnist")
    labels = np.ones((5, 1), dtype=np.int64)

    assert auc_from_histograms(score_histograms(task, labels, np.full((5, 2), 0.5))) is None


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist", "chestmnist"])
def test_split_auc_is_medmnists_auc_ties_included(flag):
    rng = np.random.default_rng(1)
    task = task_info(flag)
    labels, scores = _random_split(task, 200, rng)
    scores = np.round(scores, 1)  # many ties

    assert split_auc(task, labels, scores) == pytest.approx(getAUC(labels, scores, task.task_type), abs=1e-12)


def test_split_auc_is_nan_where_medmnist_raises():
    task = task_info("bloodmnist")
    labels = np.zeros((6, 1), dtype=np.int64)  # seven of eight classes absent

    assert np.isnan(split_auc(task, labels, np.full((6, 8), 1 / 8)))


def test_sparse_histograms_round_trip_and_stay_small():
    rng = np.random.default_rng(2)
    task = task_info("bloodmnist")
    labels, scores = _random_split(task, 16, rng)
    hist = score_histograms(task, labels, scores)

    index, counts = sparse_histograms(hist)

    assert np.array_equal(dense_histograms(index, counts, hist.size), hist.ravel())
    assert len(index) <= 16 * 8  # at most one bin per sample and column, of 2 * 1000 * 8


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("seed", range(5))
def test_average_ranks_are_scipys_rankdata(dtype, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    values = (rng.random(n) * rng.choice([3, 20, 1000])).round().astype(dtype)  # few to no ties

    assert np.array_equal(average_ranks(values), rankdata(values))


def test_average_ranks_are_all_nan_like_rankdata_when_a_value_is_nan():
    values = np.array([0.3, np.nan, 0.1, 0.3])

    assert np.isnan(average_ranks(values)).all() and np.isnan(rankdata(values)).all()
