"""AUC over several hospitals' test splits without pooling their scores.

Each hospital sends, per class (or label), a histogram of its scores for positives and for
negatives; summed histograms give the AUC of the union of the test splits, exactly up to ties
inside one bin (bin width 1/bins). The class averaging follows MedMNIST's `getAUC`.
"""

from __future__ import annotations

import math

import numpy as np

from fl_app.data import TaskInfo

AUC_BINS = 1000


def _columns(task: TaskInfo, labels: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(is_positive, score) per AUC column, as MedMNIST defines the task's AUC."""
    if task.multi_label:
        return [(labels[:, i] == 1, scores[:, i]) for i in range(scores.shape[1])]
    if task.task_type == "binary-class":
        return [(labels[:, 0] == 1, scores[:, -1])]
    return [(labels[:, 0] == i, scores[:, i]) for i in range(scores.shape[1])]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank; all NaN if any value is NaN: scipy's
    `rankdata(values)` (method "average", nan_policy "propagate"), without importing scipy.stats
    (~0.5 s) in every hospital process.
    """
    values = np.asarray(values).ravel()
    if values.dtype.kind == "f" and np.isnan(values).any():
        return np.full(len(values), np.nan)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first position of each run of ties
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(0.5 * (ends + starts + 1), ends - starts)  # mean of ranks starts+1 .. ends
    return ranks


def split_auc(task: TaskInfo, labels: np.ndarray, scores: np.ndarray) -> float:
    """MedMNIST's `getAUC` of one split, computed as a rank statistic; NaN where it is undefined.

    Per column P(score_pos > score_neg) + ½·P(tie) from average ranks (Mann-Whitney U), which is
    sklearn's ROC AUC exactly; without sklearn's per-call input checks, which cost more than the
    model's forward pass when a hospital scores a hundred versions of a small test split.
    """
    aucs = []
    for positive, score in _columns(task, labels, scores):
        n_pos = int(positive.sum())
        n_neg = len(score) - n_pos
        if n_pos == 0 or n_neg == 0:
            return math.nan  # getAUC raises here (one class only)
        ranks = average_ranks(score)
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))


def score_histograms(task: TaskInfo, labels: np.ndarray, scores: np.ndarray, bins: int = AUC_BINS) -> np.ndarray:
    """Counts of shape (columns, 2, bins): [:, 0] positives, [:, 1] negatives."""
    hist = np.zeros((len(_columns(task, labels, scores)), 2, bins), dtype=np.int64)
    for c, (positive, score) in enumerate(_columns(task, labels, scores)):
        index = np.clip((score * bins).astype(np.int64), 0, bins - 1)
        hist[c, 0] = np.bincount(index[positive], minlength=bins)
        hist[c, 1] = np.bincount(index[~positive], minlength=bins)
    return hist


def sparse_histograms(hist: np.ndarray) -> tuple[list[int], list[int]]:
    """(flat index, count) of the non-zero bins: a small test split fills a few of the 2·bins per
    column, so a reply carries a few hundred integers per version instead of thousands of floats."""
    flat = np.asarray(hist).ravel()
    index = np.flatnonzero(flat)
    return index.tolist(), flat[index].tolist()


def dense_histograms(index: list[int], counts: list[int], size: int) -> np.ndarray:
    """The flat histogram array back from `sparse_histograms`."""
    flat = np.zeros(int(size), dtype=np.int64)
    flat[np.asarray(index, dtype=np.int64)] = np.asarray(counts, dtype=np.int64)
    return flat


def auc_from_histograms(hist: np.ndarray) -> float | None:
    """Mean over columns of P(score_pos > score_neg) + ½·P(tie); None if a column lacks a class."""
    aucs = []
    for positive, negative in hist.astype(np.float64):
        n_pos, n_neg = positive.sum(), negative.sum()
        if n_pos == 0 or n_neg == 0:
            return None  # MedMNIST's getAUC is undefined here too
        negatives_below = np.cumsum(negative) - negative
        aucs.append(float((positive * (negatives_below + 0.5 * negative)).sum() / (n_pos * n_neg)))
    return float(np.mean(aucs))
