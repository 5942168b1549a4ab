"""Load real MedMNIST files through medmnist's own dataset classes (so its checks run)."""

from __future__ import annotations

import os

import medmnist
import numpy as np
from medmnist import INFO

from fl_app.data.arrays import SPLITS, SplitArrays
from fl_app.data.tasks import SIZES, npz_name, task_info


class MedMNISTUnavailable(RuntimeError):
    """A MedMNIST file cannot be used: missing, download failed, or wrong split sizes."""

    def __init__(self, flag: str, size: int, root: str, reason: str, download: bool = False, missing: bool = False):
        self.flag, self.size, self.root, self.reason, self.missing = flag, size, root, reason, missing
        fix = f"put {npz_name(flag, size)} under {root}" + ("" if download else " or enable download")
        super().__init__(f"MedMNIST {flag!r} ({size}px) unavailable under {root}: {reason}; fix: {fix}")


def expand_root(root: str | os.PathLike) -> str:
    """Absolute data root with `~` expanded; the form used in messages and cache keys."""
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def load_medmnist_split(
    flag: str, split: str, root: str | os.PathLike, size: int = 28, download: bool = False
) -> SplitArrays:
    """One split of `{root}/{flag}[_{size}].npz` via `medmnist.<PythonClass>`."""
    info = task_info(flag)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if size not in SIZES:
        raise ValueError(f"unknown MedMNIST size {size!r}; valid sizes: {SIZES}")
    root = expand_root(root)
    if not os.path.isdir(root):
        raise MedMNISTUnavailable(
            flag, size, root, "the root directory does not exist (create it)", download, missing=True
        )
    dataset_class = getattr(medmnist, INFO[flag]["python_class"], None)
    if dataset_class is None:  # medmnist swallows import errors of torch/PIL in its __init__
        raise ImportError(f"medmnist.{INFO[flag]['python_class']} is missing: check that torch and Pillow import")
    # medmnist's download() needs torchvision even when the file is already there: skip it then
    fetch = download and not os.path.exists(os.path.join(root, npz_name(flag, size)))
    try:
        ds = dataset_class(split=split, root=root, size=size, download=fetch)
    except RuntimeError as e:
        reason = "download failed" if fetch else f"{npz_name(flag, size)} not found"
        raise MedMNISTUnavailable(flag, size, root, reason, download, missing=True) from e
    except (KeyError, ValueError, OSError) as e:  # unreadable archive or missing keys
        raise MedMNISTUnavailable(flag, size, root, f"unreadable file ({e})", download) from e
    try:
        n = len(ds)  # medmnist asserts the official split size here
    except AssertionError as e:
        expected = INFO[flag]["n_samples"][split]
        reason = f"{split} split has {ds.imgs.shape[0]} images, expected {expected}"
        raise MedMNISTUnavailable(flag, size, root, reason, download) from e
    images = np.asarray(ds.imgs)
    expected_ndim = 4 if info.n_channels == 3 else 3
    if images.dtype != np.uint8 or images.ndim != expected_ndim or images.shape[1:3] != (size, size):
        layout = f"(N, {size}, {size}, 3)" if expected_ndim == 4 else f"(N, {size}, {size})"
        reason = f"{split}_images is {images.dtype} {images.shape}, expected uint8 {layout}"
        raise MedMNISTUnavailable(flag, size, root, reason, download)
    # some published copies store single-label targets as 1-D (N,)
    labels = np.asarray(ds.labels).reshape(n, -1).astype(np.int64)
    return SplitArrays(images=images, labels=labels)


def load_medmnist_task(
    flag: str, root: str | os.PathLike, size: int = 28, download: bool = False
) -> dict[str, SplitArrays]:
    """All three official splits of one task; MedMNISTUnavailable if the file cannot be used."""
    return {
        split: load_medmnist_split(flag, split, root, size, download=download and i == 0)
        for i, split in enumerate(SPLITS)
    }
