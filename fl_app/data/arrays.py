"""In-memory MedMNIST split: the one container every loader and partitioner hands around."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class SplitArrays:
    """Images and labels of one split, in MedMNIST layout.

    images: uint8, (N, H, W) for grayscale or (N, H, W, 3) for RGB.
    labels: int64, (N, L); L = 1 for single-label tasks, the number of labels for multi-label ones.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim not in (3, 4):
            raise ValueError(f"SplitArrays.images must be (N, H, W) or (N, H, W, 3), got shape {self.images.shape}")
        if self.labels.ndim != 2:
            raise ValueError(f"SplitArrays.labels must be (N, L), got shape {self.labels.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"SplitArrays has {len(self.images)} images but {len(self.labels)} labels; they must match"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> SplitArrays:
        """The samples at `idx` (a copy), e.g. one hospital's partition."""
        idx = np.asarray(idx, dtype=np.int64)
        return SplitArrays(images=self.images[idx], labels=self.labels[idx])
