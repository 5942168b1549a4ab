"""Split a task's samples among the hospitals that share it: IID or label-skewed (Dirichlet).

Dirichlet follows Hsu et al. 2019 ("Measuring the effects of non-identical data distribution for
federated visual classification"): for every class k, hospital shares q_k ~ Dir(alpha * 1). Small
alpha gives each hospital a few dominant classes; large alpha approaches IID. The same shares are
applied to val and test, so a hospital is evaluated on the label mix it trains on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

Scheme = Literal["iid", "dirichlet"]
SCHEMES: tuple[str, ...] = ("iid", "dirichlet")
MAX_DIRICHLET_TRIES = 1000


def partition_classes(labels: np.ndarray) -> np.ndarray:
    """The integer class each sample is partitioned by: the label, or the first label column
    of a multi-label task (ChestMNIST: atelectasis yes/no)."""
    labels = np.asarray(labels)
    y = labels[:, 0] if labels.ndim == 2 else labels.reshape(-1)
    if y.size and (y.min() < 0 or not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels must be non-negative integers, got dtype {y.dtype} with minimum {y.min()}")
    return y.astype(np.int64)


def _check_parts(n: int, num_parts: int, min_size: int) -> None:
    if num_parts < 1:
        raise ValueError(f"num_parts (hospitals) must be >= 1, got {num_parts}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if num_parts * min_size > n:
        raise ValueError(
            f"more hospitals than samples: {num_parts} hospitals x min_size {min_size} = "
            f"{num_parts * min_size} > {n} samples; lower min_size or use fewer hospitals"
        )


def _class_counts(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y, minlength=n_classes)


def _cuts(n: int, shares: np.ndarray) -> np.ndarray:
    """Cut points splitting n items by `shares` (sum 1): every item lands in exactly one part."""
    return np.rint(np.cumsum(shares)[:-1] * n).astype(np.int64).clip(0, n)


def _part_sizes(counts: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    sizes = np.zeros(proportions.shape[1], dtype=np.int64)
    for n_k, shares in zip(counts, proportions, strict=True):
        sizes += np.diff(np.concatenate([[0], _cuts(n_k, shares), [n_k]]))
    return sizes


def class_proportions(
    labels: np.ndarray,
    num_parts: int,
    alpha: float,
    seed: int,
    min_size: int = 0,
    n_classes: int | None = None,
) -> np.ndarray:
    """Per-class hospital shares, (n_classes, num_parts) with rows summing to 1.

    Resampled until every hospital gets >= min_size of `labels` (at most MAX_DIRICHLET_TRIES times).
    n_classes defaults to max(label) + 1; pass the task's class count so val/test can reuse the shares.
    """
    y = partition_classes(labels)
    _check_parts(len(y), num_parts, min_size)
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    n_classes = int(y.max(initial=-1)) + 1 if n_classes is None else n_classes
    if y.size and y.max() >= n_classes:
        raise ValueError(f"label {y.max()} out of range for n_classes={n_classes}")
    counts = _class_counts(y, n_classes)
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DIRICHLET_TRIES):
        proportions = rng.dirichlet(np.full(num_parts, float(alpha)), size=n_classes)
        if _part_sizes(counts, proportions).min() >= min_size:
            return proportions
    raise ValueError(
        f"dirichlet partition (alpha={alpha}) gave some of {num_parts} hospitals fewer than "
        f"min_size={min_size} of {len(y)} samples in {MAX_DIRICHLET_TRIES} tries; "
        "lower min_size, raise alpha or use fewer hospitals"
    )


def split_by_proportions(labels: np.ndarray, proportions: np.ndarray, seed: int) -> list[np.ndarray]:
    """Sorted index arrays, one per hospital: class k's samples shuffled and cut by proportions[k]."""
    y = partition_classes(labels)
    n_classes, num_parts = proportions.shape
    if y.size and y.max() >= n_classes:
        raise ValueError(f"label {y.max()} has no row in proportions of shape {proportions.shape}")
    rng = np.random.default_rng(seed)
    parts = [[np.empty(0, dtype=np.int64)] for _ in range(num_parts)]
    for k in range(n_classes):
        idx = rng.permutation(np.flatnonzero(y == k))
        for part, chunk in zip(parts, np.split(idx, _cuts(len(idx), proportions[k])), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def _iid(n: int, num_parts: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(chunk) for chunk in np.array_split(order, num_parts)]


def partition_indices(
    labels: np.ndarray,
    num_parts: int,
    scheme: Scheme = "iid",
    alpha: float = 0.5,
    min_size: int = 0,
    seed: int = 0,
) -> list[np.ndarray]:
    """Disjoint sorted index arrays covering every sample once, one per hospital, each >= min_size.

    iid: seeded shuffle, near-equal split. dirichlet: label skew with concentration alpha.
    """
    y = partition_classes(labels)
    _check_parts(len(y), num_parts, min_size)
    if scheme == "iid":
        return _iid(len(y), num_parts, seed)
    if scheme == "dirichlet":
        return split_by_proportions(y, class_proportions(y, num_parts, alpha, seed, min_size), seed)
    raise ValueError(f"unknown partition scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")


def partition_splits(
    labels_by_split: Mapping[str, np.ndarray],
    num_parts: int,
    scheme: Scheme = "iid",
    alpha: float = 0.5,
    min_size: int = 0,
    seed: int = 0,
    n_classes: int | None = None,
) -> dict[str, list[np.ndarray]]:
    """Partition train/val/test of one task consistently.

    min_size applies to train; val and test are cut with train's Dirichlet shares (so each
    hospital's evaluation data follows its training label mix) and may be small or empty.
    """
    if "train" not in labels_by_split:
        raise ValueError(f"partition_splits needs a 'train' split, got {sorted(labels_by_split)}")
    seeds = np.random.SeedSequence(int(seed) % 2**63).spawn(len(labels_by_split) + 1)
    split_seeds = {
        split: int(s.generate_state(1)[0]) for split, s in zip(sorted(labels_by_split), seeds[1:], strict=True)
    }
    train = partition_classes(labels_by_split["train"])
    _check_parts(len(train), num_parts, min_size)
    if scheme == "iid":
        return {split: _iid(len(labels), num_parts, split_seeds[split]) for split, labels in labels_by_split.items()}
    if scheme != "dirichlet":
        raise ValueError(f"unknown partition scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    if n_classes is None:
        n_classes = max(int(partition_classes(v).max(initial=-1)) for v in labels_by_split.values()) + 1
    proportions = class_proportions(train, num_parts, alpha, int(seeds[0].generate_state(1)[0]), min_size, n_classes)
    return {
        split: split_by_proportions(labels, proportions, split_seeds[split])
        for split, labels in labels_by_split.items()
    }
