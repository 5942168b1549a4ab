"""Leakage audit, pure: how close released images sit to patients, and whether an adapter tells members apart.

- Nearest-neighbour distances: each calibration image's distance to its nearest real training image,
  against the typical distance from a real *test* image to its nearest training image (what an
  unrelated patient of the same distribution looks like). A ratio well below 1, or many images
  closer than the 5th percentile of test-to-train distances, means the set reproduces patients.
- Membership inference by loss threshold (Yeom et al., CSF 2018): AUC of telling the hospital's
  training images (members) from its held-out test images by the released model's loss; 0.5 = no signal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, exclude_self: bool = False) -> np.ndarray:
    """L2 distance from each query row to its nearest reference row (chunked: memory stays small).

    exclude_self: queries are the references themselves; each row's zero distance to itself is skipped.
    """
    queries, references = queries.flatten(1).float(), references.flatten(1).float()
    nearest = []
    for start in range(0, len(queries), 256):
        distances = torch.cdist(queries[start : start + 256], references)
        if exclude_self:
            rows = torch.arange(distances.shape[0])
            distances[rows, rows + start] = float("inf")
        nearest.append(distances.min(dim=1).values)
    return torch.cat(nearest).numpy() if nearest else np.zeros(0)


def nearest_indices(queries: torch.Tensor, references: torch.Tensor, k: int) -> np.ndarray:
    """Indices (N, k) of each query's k nearest reference rows, nearest first."""
    distances = torch.cdist(queries.flatten(1).float(), references.flatten(1).float())
    return distances.topk(min(k, references.shape[0]), largest=False).indices.numpy()


@dataclass(frozen=True)
class Closeness:
    """Released images against patients, in one space (pixels or embeddings)."""

    released_median: float  # median nearest-training distance of the released images
    test_median: float  # median nearest-training distance of real test images (the baseline)
    ratio: float  # released_median / test_median: ~1 or more = no closer than a new patient
    closer_than_p5: float  # fraction of released images closer than the test distances' 5th percentile

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def closeness(released: np.ndarray, test_to_train: np.ndarray) -> Closeness:
    released_median, test_median = float(np.median(released)), float(np.median(test_to_train))
    return Closeness(
        released_median,
        test_median,
        released_median / test_median if test_median > 0 else float("nan"),
        float(np.mean(released < np.percentile(test_to_train, 5))),
    )


def membership_auc(member_losses: np.ndarray, non_member_losses: np.ndarray, seed: int = 0) -> float:
    """Loss-threshold attack AUC on a balanced sample (the larger group subsampled, seeded)."""
    rng = np.random.default_rng(seed)
    n = min(len(member_losses), len(non_member_losses))
    if n == 0:
        return float("nan")
    members = rng.choice(member_losses, n, replace=False)
    others = rng.choice(non_member_losses, n, replace=False)
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    return float(roc_auc_score(labels, -np.concatenate([members, others])))  # lower loss -> "member"
